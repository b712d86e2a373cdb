//! Native reference for `make bench`: matrix-sdk-crypto 0.19.1 (the Rust code that
//! matrix-sdk-crypto-wasm 18.9.0 wraps), compiled natively, on the same fixtures as heirloom.
//!
//! One process does one operation on one store, so its peak RSS belongs to that work only:
//!
//!   heirloom-native-bench --op build  --store memory|sqlite --fixture KEY_EXPORT.json --room ROOM
//!   heirloom-native-bench --op import --store memory|sqlite --bundle BUNDLE.json      --room ROOM
//!
//! build: a fresh OlmMachine on the store, filled from the key export (untimed setup), then each
//!   run times `Store::build_room_key_bundle`, serialising the bundle to JSON and encrypting it
//!   with `AttachmentEncryptor` (AES-256-CTR + SHA-256) into memory.
//! import: each run a fresh OlmMachine on a fresh store (untimed), then times deserialising the
//!   decrypted bundle (the same bytes heirloom imports) and `Store::receive_room_key_bundle`, the
//!   store's MSC4268 bundle import, with the bundle's sender trusted as an unverified
//!   cross-signed device (the lowest trust it accepts a bundle from).
//!
//! Runs: one warm-up run, discarded from the timings, then --runs timed runs (the same rule as
//! heirloom's and the wasm reference's sides). Memory: before the warm-up run, freed memory is
//! returned to the OS (malloc_trim) and the kernel's peak-RSS mark is reset
//! (/proc/self/clear_refs); the warm-up run's peak RSS (VmHWM) and the RSS before it are reported.
//!
//! stdout: one JSON line. Progress goes to stderr.

use std::{
    io::{Cursor, Read},
    path::{Path, PathBuf},
    time::Instant,
};

use matrix_sdk_crypto::{
    AttachmentEncryptor, OlmMachine, OlmMachineBuilder,
    olm::{ExportedRoomKey, KnownSenderData, SenderData},
    store::types::StoredRoomKeyBundleData,
    types::{events::room_key_bundle::RoomKeyBundleContent, room_history::RoomKeyBundle},
    vodozemac::{Curve25519SecretKey, Ed25519SecretKey},
};
use matrix_sdk_sqlite::SqliteCryptoStore;
use ruma::{
    OwnedMxcUri, RoomId, device_id, events::room::EncryptedFile, owned_device_id, owned_user_id,
    user_id,
};
use serde_json::json;

const IMPL: &str = "matrix-sdk-crypto 0.19.1 (native)";
const PASSPHRASE: &str = "heirloom-bench-passphrase";

type Error = Box<dyn std::error::Error>;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Build,
    Import,
}

#[derive(Clone, Copy, PartialEq)]
enum StoreKind {
    Memory,
    Sqlite,
}

struct Args {
    op: Op,
    store: StoreKind,
    input: PathBuf,
    room: String,
    runs: usize,
    dir: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: heirloom-native-bench --op build|import --store memory|sqlite \
         (--fixture KEY_EXPORT.json | --bundle BUNDLE.json) --room ROOM_ID [--runs 5] [--dir TMPDIR]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut op = None;
    let mut store = None;
    let mut input = None;
    let mut room = None;
    let mut runs = 5;
    let mut dir = std::env::temp_dir();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--op" => {
                op = Some(match value.as_str() {
                    "build" => Op::Build,
                    "import" => Op::Import,
                    _ => usage(),
                })
            }
            "--store" => {
                store = Some(match value.as_str() {
                    "memory" => StoreKind::Memory,
                    "sqlite" => StoreKind::Sqlite,
                    _ => usage(),
                })
            }
            "--fixture" | "--bundle" => input = Some(PathBuf::from(value)),
            "--room" => room = Some(value),
            "--runs" => runs = value.parse().unwrap_or_else(|_| usage()),
            "--dir" => dir = PathBuf::from(value),
            _ => usage(),
        }
    }
    match (op, store, input, room) {
        (Some(op), Some(store), Some(input), Some(room)) if runs > 0 => {
            Args { op, store, input, room, runs, dir }
        }
        _ => usage(),
    }
}

/// A field of /proc/self/status, in bytes.
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Returns freed heap to the OS and resets the peak-RSS mark; returns the RSS after that.
fn reset_peak_rss() -> u64 {
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps and in its arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("[native] cannot reset the peak RSS mark ({e}): peak covers the setup too");
    }
    proc_status("VmRSS")
}

/// A fresh OlmMachine on a fresh store; the SQLite store lives in its own directory under dir.
async fn fresh_machine(kind: StoreKind, dir: &Path, n: usize) -> Result<OlmMachine, Error> {
    let builder = OlmMachineBuilder::new(user_id!("@bench:localhost"), device_id!("BENCH"));
    let machine = match kind {
        StoreKind::Memory => builder.build().await?,
        StoreKind::Sqlite => {
            let path = dir.join(format!("store-{n}"));
            let _ = std::fs::remove_dir_all(&path);
            let store = SqliteCryptoStore::open(&path, Some(PASSPHRASE)).await?;
            builder.with_crypto_store(store).build().await?
        }
    };
    Ok(machine)
}

fn drop_store(kind: StoreKind, dir: &Path, n: usize) {
    if kind == StoreKind::Sqlite {
        let _ = std::fs::remove_dir_all(dir.join(format!("store-{n}")));
    }
}

fn ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

struct Outcome {
    room_keys: usize,
    withheld: usize,
    bundle_bytes: usize,
}

/// One timed build on a filled machine.
async fn build_once(machine: &OlmMachine, room: &RoomId) -> Result<(f64, Outcome), Error> {
    let start = Instant::now();
    let bundle = machine.store().build_room_key_bundle(room).await?;
    let plain = serde_json::to_vec(&bundle)?;
    let mut cursor = Cursor::new(plain);
    let mut encryptor = AttachmentEncryptor::new(&mut cursor);
    let mut encrypted = Vec::new();
    encryptor.read_to_end(&mut encrypted)?;
    let _info = encryptor.finish();
    let elapsed = ms(start);
    let outcome = Outcome {
        room_keys: bundle.room_keys.len(),
        withheld: bundle.withheld.len(),
        bundle_bytes: encrypted.len(),
    };
    Ok((elapsed, outcome))
}

/// What the store knows of the bundle's sender: a cross-signed device whose identity is not
/// verified (TOFU), as after fetching the inviter's keys.
fn bundle_info(room: &RoomId) -> Result<StoredRoomKeyBundleData, Error> {
    let sender_key = Curve25519SecretKey::new();
    let master_key = Ed25519SecretKey::new().public_key();
    let mut plain = Cursor::new(Vec::new());
    let encryptor = AttachmentEncryptor::new(&mut plain);
    let media = encryptor.finish();
    let url: OwnedMxcUri = "mxc://localhost/bench-bundle".into();
    Ok(StoredRoomKeyBundleData {
        sender_user: owned_user_id!("@alice:localhost"),
        sender_key: (&sender_key).into(),
        sender_data: SenderData::SenderUnverified(KnownSenderData {
            user_id: owned_user_id!("@alice:localhost"),
            device_id: Some(owned_device_id!("ALICE")),
            master_key: Box::new(master_key),
        }),
        bundle_data: RoomKeyBundleContent {
            room_id: room.to_owned(),
            file: EncryptedFile::new(url, media.encryption_info, media.hashes),
        },
    })
}

/// One timed import of the decrypted bundle into a fresh machine, then (untimed) what it holds.
async fn import_once(
    machine: &OlmMachine,
    room: &RoomId,
    info: &StoredRoomKeyBundleData,
    plain: &[u8],
) -> Result<(f64, Outcome), Error> {
    let start = Instant::now();
    let bundle: RoomKeyBundle = serde_json::from_slice(plain)?;
    machine.store().receive_room_key_bundle(info, bundle, |_, _| {}).await?;
    let elapsed = ms(start);
    let room_keys = machine.store().get_inbound_group_sessions_by_room_id(room).await?.len();
    let withheld = machine.store().get_withheld_sessions_by_room_id(room).await?.len();
    Ok((elapsed, Outcome { room_keys, withheld, bundle_bytes: plain.len() }))
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = parse_args();
    let room = RoomId::parse(&args.room)?;
    let (side, store_name) = match args.store {
        StoreKind::Memory => ("native-memory", "memory store"),
        StoreKind::Sqlite => ("native-sqlite", "SqliteCryptoStore with a passphrase"),
    };
    std::fs::create_dir_all(&args.dir)?;
    let input = std::fs::read(&args.input)?;
    let total = args.runs + 1;
    let mut times = Vec::with_capacity(total);
    let mut machine_ms = Vec::with_capacity(total);
    let mut outcome = None;
    let (mut rss_before, mut rss_peak) = (0, 0);

    match args.op {
        Op::Build => {
            let keys: Vec<ExportedRoomKey> = serde_json::from_slice(&input)?;
            let sessions = keys.len();
            let start = Instant::now();
            let machine = fresh_machine(args.store, &args.dir, 0).await?;
            machine_ms.push(ms(start));
            let start = Instant::now();
            let result = machine.store().import_exported_room_keys(keys, |_, _| {}).await?;
            eprintln!(
                "[native] {side}: filled {}/{} sessions from {} in {:.0} ms",
                result.imported_count,
                sessions,
                args.input.display(),
                ms(start)
            );
            drop(input);
            for run in 0..total {
                if run == 0 {
                    rss_before = reset_peak_rss();
                }
                let (t, o) = build_once(&machine, &room).await?;
                if run == 0 {
                    rss_peak = proc_status("VmHWM");
                }
                eprintln!(
                    "[native] {side} build run {run}{}: {t:.1} ms, {} room_keys, {} withheld, {} B",
                    if run == 0 { " (warm-up)" } else { "" },
                    o.room_keys,
                    o.withheld,
                    o.bundle_bytes
                );
                times.push(t);
                outcome = Some(o);
            }
            drop(machine);
            drop_store(args.store, &args.dir, 0);
        }
        Op::Import => {
            let info = bundle_info(&room)?;
            for run in 0..total {
                let start = Instant::now();
                let machine = fresh_machine(args.store, &args.dir, run).await?;
                machine_ms.push(ms(start));
                if run == 0 {
                    rss_before = reset_peak_rss();
                }
                let (t, o) = import_once(&machine, &room, &info, &input).await?;
                if run == 0 {
                    rss_peak = proc_status("VmHWM");
                }
                eprintln!(
                    "[native] {side} import run {run}{}: {t:.1} ms, {} room_keys, {} withheld",
                    if run == 0 { " (warm-up)" } else { "" },
                    o.room_keys,
                    o.withheld
                );
                times.push(t);
                outcome = Some(o);
                drop(machine);
                drop_store(args.store, &args.dir, run);
            }
        }
    }

    let outcome = outcome.expect("at least one run");
    let runs = &times[1..];
    let out = json!({
        "impl": format!("{IMPL}, {store_name}"),
        "side": side,
        "op": if args.op == Op::Build { "build" } else { "import" },
        "sessions": outcome.room_keys + outcome.withheld,
        "warmup_ms": times[0],
        "runs_ms": runs,
        "median_ms": median(runs),
        "room_keys": outcome.room_keys,
        "withheld": outcome.withheld,
        "bundle_bytes": outcome.bundle_bytes,
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": rss_peak,
        "machine_ms": median(&machine_ms),
    });
    println!("{out}");
    Ok(())
}
