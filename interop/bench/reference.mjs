#!/usr/bin/env node
// Reference-side benchmark for `make bench`: matrix-rust-sdk (crypto 0.19.1, through
// @matrix-org/matrix-sdk-crypto-wasm 18.9.0, called directly, no js-sdk) on the same inputs as
// heirloom's Go benchmark. One process does one operation, so its peak RSS is that work's.
//
// Usage: node --expose-gc interop/bench/reference.mjs --op build  --fixture KEY_EXPORT.json --room ROOM [--runs 5]
//        node --expose-gc interop/bench/reference.mjs --op import --bundle  BUNDLE.json     --room ROOM [--runs 5]
//
// build: one in-memory OlmMachine, filled with importExportedRoomKeys(<fixture text>) (untimed
//   setup); each run times buildRoomKeyBundle(room): collects the room's inbound sessions,
//   exports the shared ones, writes withheld entries for the rest, serialises and encrypts
//   (AES-CTR + SHA-256) the bundle. Uploading and sending are separate calls: not measured.
// import: each run sets up (untimed) a fresh inviter machine with a cross-signing identity and a
//   fresh invitee machine (both cross-signed), establishes Olm between them through an in-process key server
//   (keyserver.mjs), has the inviter send the m.room_key_bundle details of an attachment holding
//   the decrypted bundle heirloom imports (the same bytes), and the invitee receive them; then it
//   times receiveRoomKeyBundle(data, encrypted bytes), the store's MSC4268 bundle import. That call
//   also checks the hash and decrypts the attachment: the decryption alone is timed separately and
//   reported as decrypt_ms.
//
// Runs: one warm-up run, discarded from the timings, then --runs timed runs (the same rule as the
// other sides). Memory: before the warm-up run, a full GC and a reset of the kernel's peak-RSS mark
// (/proc/self/clear_refs); the warm-up run's peak RSS (VmHWM) and the RSS before it are reported.
// The wasm linear memory never shrinks, so memory the setup grew and freed is reused unseen.
//
// History flag in exports, as rust-sdk 0.19 reads it: `m.shared_history` or
// `org.matrix.msc3061.shared_history`; plain `shared_history` is ignored, and an entry carrying
// both `m.shared_history` and the unstable name makes the whole import fail (serde error).
//
// stdout: one JSON line. Everything else goes to stderr.

import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import {
    initAsync,
    OlmMachine,
    UserId,
    DeviceId,
    RoomId,
    Attachment,
    CollectStrategy,
    RequestType,
} from "@matrix-org/matrix-sdk-crypto-wasm";
import { KeyServer } from "./keyserver.mjs";

const IMPL = "matrix-sdk-crypto-wasm 18.9.0 (in-memory store)";

const { values: args } = parseArgs({
    options: {
        op: { type: "string" },
        fixture: { type: "string" },
        bundle: { type: "string" },
        runs: { type: "string", default: "5" },
        room: { type: "string", default: "!bench:localhost" },
    },
});
const log = (...a) => console.error("[wasm]", ...a);
const usage = () => {
    console.error("usage: node --expose-gc interop/bench/reference.mjs --op build --fixture PATH | --op import --bundle PATH [--room ROOM_ID] [--runs 5]");
    process.exit(2);
};
if (!(args.op === "build" && args.fixture) && !(args.op === "import" && args.bundle)) usage();
const runs = Number(args.runs);
if (!Number.isInteger(runs) || runs < 1) usage();

const procStatus = (field) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
};
const resetPeakRss = () => {
    if (globalThis.gc) globalThis.gc();
    else log("no --expose-gc: garbage of the setup is still counted in the RSS before the warm-up run");
    try {
        writeFileSync("/proc/self/clear_refs", "5");
    } catch (e) {
        log(`cannot reset the peak RSS mark (${e.message}): peak covers the setup too`);
    }
    return procStatus("VmRSS");
};
const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x) => Math.round(x * 10) / 10;
const countBundle = (encrypted) => {
    const plain = Attachment.decrypt(encrypted); // consumes the key
    const parsed = JSON.parse(new TextDecoder().decode(plain));
    return { room_keys: parsed.room_keys?.length ?? 0, withheld: parsed.withheld?.length ?? 0 };
};

await initAsync();
const room = () => new RoomId(args.room);
const times = [];
let rssBefore = 0;
let rssPeak = 0;
let counts = null;
let bundleBytes = 0;
let extra = {};

if (args.op === "build") {
    // The fixture is handed to rust as text, as importExportedRoomKeys takes it.
    const text = readFileSync(args.fixture, "utf8");
    if (/"shared_history"/.test(text) && !/"(m|org\.matrix\.msc3061)\.shared_history"/.test(text)) {
        log("WARNING: fixture has only plain `shared_history`, which rust-sdk ignores in exports: every session will be withheld");
    }
    const machine = await OlmMachine.initialize(new UserId("@bench:localhost"), new DeviceId("BENCH"));
    let t0 = performance.now();
    const result = await machine.importExportedRoomKeys(text, () => {});
    log(`filled ${result.importedCount}/${result.totalCount} sessions in ${(performance.now() - t0).toFixed(0)} ms`);
    result.free();
    for (let run = 0; run <= runs; run++) {
        if (run === 0) rssBefore = resetPeakRss();
        t0 = performance.now();
        const bundle = await machine.buildRoomKeyBundle(room());
        times.push(performance.now() - t0);
        if (run === 0) rssPeak = procStatus("VmHWM");
        if (!bundle) throw new Error(`buildRoomKeyBundle returned nothing for ${args.room}`);
        bundleBytes = bundle.encryptedData.length;
        if (run === 0) counts = countBundle(bundle);
        bundle.free();
        log(`build run ${run}${run === 0 ? " (warm-up)" : ""}: ${times[run].toFixed(1)} ms, ${bundleBytes} B`);
    }
    machine.close();
} else {
    const plaintext = readFileSync(args.bundle);
    const INVITER = "@alice:localhost";
    const inviter = () => new UserId(INVITER); // wasm calls may take ownership: a fresh one each use
    let decryptMs = [];
    for (let run = 0; run <= runs; run++) {
        // Untimed setup: two fresh machines, cross-signing for the inviter, Olm between them, the
        // bundle's details sent and received as an encrypted to-device message.
        const ks = new KeyServer();
        const alice = await OlmMachine.initialize(inviter(), new DeviceId("ALICE"));
        const bob = await OlmMachine.initialize(new UserId("@bench:localhost"), new DeviceId("BENCH"));
        await ks.flush(alice);
        await ks.flush(bob);
        // Both need a cross-signing identity: rust-sdk sends bundle details only to devices their
        // owner's identity signed (identity-based sharing), and accepts a bundle only from one.
        await ks.bootstrapCrossSigning(alice);
        await ks.bootstrapCrossSigning(bob);
        const attachment = Attachment.encrypt(plaintext);
        const info = attachment.mediaEncryptionInfo;
        const encrypted = attachment.encryptedData;
        await alice.updateTrackedUsers([bob.userId]);
        await ks.flush(alice);
        const claim = await alice.getMissingSessions([bob.userId]);
        if (claim) {
            const response = ks.serve(alice, claim.type, JSON.parse(claim.body), claim);
            await alice.markRequestAsSent(claim.id, claim.type, JSON.stringify(response));
        }
        const sends = await alice.shareRoomKeyBundleData(bob.userId, room(), "mxc://localhost/bench-bundle", info,
            CollectStrategy.identityBasedStrategy());
        for (const req of sends) {
            ks.queueToDevice(INVITER, req);
            await alice.markRequestAsSent(req.id, RequestType.ToDevice, "{}");
        }
        await bob.updateTrackedUsers([inviter()]);
        await ks.flush(bob);
        await ks.deliver(bob);
        await ks.flush(bob);
        const data = await bob.getReceivedRoomKeyBundleData(room(), inviter());
        if (!data) throw new Error("the invitee did not accept the m.room_key_bundle message");

        if (run === 0) rssBefore = resetPeakRss();
        const t0 = performance.now();
        await bob.receiveRoomKeyBundle(data, encrypted);
        times.push(performance.now() - t0);
        if (run === 0) rssPeak = procStatus("VmHWM");

        // Untimed: what the invitee now holds, by building its own bundle of the room (imported
        // sessions count as shared; received withheld entries are passed on).
        const rebuilt = await bob.buildRoomKeyBundle(room());
        counts = rebuilt ? countBundle(rebuilt) : { room_keys: 0, withheld: 0 };
        rebuilt?.free();
        const t1 = performance.now();
        Attachment.decrypt(attachment);
        decryptMs.push(performance.now() - t1);
        attachment.free();
        log(`import run ${run}${run === 0 ? " (warm-up)" : ""}: ${times[run].toFixed(1)} ms (decrypt alone ${decryptMs[run].toFixed(1)} ms), ` +
            `${counts.room_keys} room_keys, ${counts.withheld} withheld`);
        alice.close();
        bob.close();
    }
    bundleBytes = plaintext.length;
    extra = { decrypt_ms: round(median(decryptMs.slice(1))) };
}

const timed = times.slice(1).map(round);
process.stdout.write(
    JSON.stringify({
        impl: IMPL,
        side: "wasm",
        op: args.op,
        sessions: counts.room_keys + counts.withheld,
        warmup_ms: round(times[0]),
        runs_ms: timed,
        median_ms: round(median(timed)),
        room_keys: counts.room_keys,
        withheld: counts.withheld,
        bundle_bytes: bundleBytes,
        rss_before_bytes: rssBefore,
        rss_peak_bytes: rssPeak,
        ...extra,
    }) + "\n",
);
