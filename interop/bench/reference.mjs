#!/usr/bin/env node
// Reference-side benchmark for `make bench`: measures matrix-rust-sdk (crypto
// 0.19.1, through @matrix-org/matrix-sdk-crypto-wasm 18.9.0, called directly,
// no js-sdk) on the same fixture heirloom's Go benchmark uses.
//
// Usage: node interop/bench/reference.mjs --fixture PATH [--runs 5] [--room ROOM_ID]
//
// The fixture is a key export (JSON array of ExportedRoomKey). Each run:
//   1. a fresh in-memory OlmMachine, then time importExportedRoomKeys(<file text>)
//      (the file text is passed as-is: parsing it is part of the import);
//   2. time buildRoomKeyBundle(room) on that machine: collects every inbound
//      session of the room, exports the shared ones / writes withheld entries
//      for the rest, serialises and encrypts (AES-CTR + SHA-256) the bundle.
//      Uploading and sending (shareRoomKeyBundleData) are separate calls and
//      need a server: not measured.
// The first run's bundle is decrypted (outside the timings) to count
// room_keys / withheld.
//
// History flag in exports, as rust-sdk 0.19 reads it (checked against this wasm
// build): `m.shared_history` or `org.matrix.msc3061.shared_history`; plain
// `shared_history` is IGNORED (session counts as not shared), and an entry
// carrying both `m.shared_history` and `org.matrix.msc3061.shared_history`, or
// a non-boolean value, makes the WHOLE import fail (serde error). Exports are
// written with `m.shared_history` only.
//
// stdout: one JSON line. Everything else goes to stderr.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import {
    initAsync,
    OlmMachine,
    UserId,
    DeviceId,
    RoomId,
    Attachment,
} from "@matrix-org/matrix-sdk-crypto-wasm";

const IMPL = "matrix-sdk-crypto-wasm 18.9.0";

const { values: args } = parseArgs({
    options: {
        fixture: { type: "string" },
        runs: { type: "string", default: "5" },
        room: { type: "string" },
    },
});
const log = (...a) => console.error("[reference]", ...a);

if (!args.fixture) {
    console.error("usage: node interop/bench/reference.mjs --fixture PATH [--runs 5] [--room ROOM_ID]");
    process.exit(2);
}
const runs = Number(args.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error("--runs must be a positive integer");

// Catch the wasm instance's linear memory (not exported by the bindings) so we
// can report its size. The loader calls WebAssembly.instantiate once in initAsync.
let wasmMemory = null;
const instantiate = WebAssembly.instantiate;
WebAssembly.instantiate = async function (...a) {
    const r = await instantiate.apply(this, a);
    wasmMemory ??= (r.instance ?? r).exports?.memory ?? null;
    return r;
};
await initAsync();
WebAssembly.instantiate = instantiate;
const wasmBytes = () => wasmMemory?.buffer.byteLength ?? null;

// The fixture is handed to rust as text; we don't JSON.parse it here (a 100k
// fixture as JS objects would dominate the RSS figure). Cheap checks only.
const text = readFileSync(args.fixture, "utf8");
const roomId = args.room ?? /"room_id"\s*:\s*"([^"]+)"/.exec(text)?.[1];
if (!roomId) throw new Error("no room_id in fixture; pass --room");
if (/"shared_history"/.test(text) && !/"(m|org\.matrix\.msc3061)\.shared_history"/.test(text)) {
    log("WARNING: fixture has only plain `shared_history`, which rust-sdk ignores in exports:",
        "every session will be withheld. Add `org.matrix.msc3061.shared_history` (or `m.shared_history`, not both).");
}

const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x) => Math.round(x * 10) / 10;
const mem = () => {
    const u = process.memoryUsage();
    return { rss: u.rss, arrayBuffers: u.arrayBuffers, wasm: wasmBytes() };
};
const fmtMem = (m) =>
    `rss=${(m.rss / 2 ** 20).toFixed(1)}MiB arrayBuffers=${(m.arrayBuffers / 2 ** 20).toFixed(1)}MiB wasm=${m.wasm == null ? "?" : (m.wasm / 2 ** 20).toFixed(1) + "MiB"}`;

const baseline = mem();
log(`fixture ${args.fixture} (${text.length} bytes), room ${roomId}, ${runs} run(s); baseline ${fmtMem(baseline)}`);

const importMs = [];
const buildMs = [];
let sessions = null;
let bundleBytes = null;
let counts = { room_keys: null, withheld: null, plaintext_bytes: null };

for (let run = 0; run < runs; run++) {
    const machine = await OlmMachine.initialize(new UserId("@bench:localhost"), new DeviceId("BENCH"));
    const before = mem();

    let t0 = performance.now();
    const result = await machine.importExportedRoomKeys(text, () => {});
    importMs.push(performance.now() - t0);
    const total = result.totalCount;
    const imported = result.importedCount;
    result.free();
    if (imported !== total) log(`run ${run}: imported ${imported} of ${total}`);
    if (sessions != null && sessions !== total) throw new Error(`session count changed: ${sessions} -> ${total}`);
    sessions = total;
    const afterImport = mem();

    const room = new RoomId(roomId);
    t0 = performance.now();
    const bundle = await machine.buildRoomKeyBundle(room);
    buildMs.push(performance.now() - t0);
    room.free();
    const afterBuild = mem();

    if (!bundle) {
        log(`run ${run}: buildRoomKeyBundle returned undefined (no keys for ${roomId})`);
    } else {
        const size = bundle.encryptedData.length; // a copy of the ciphertext
        if (bundleBytes != null && Math.abs(size - bundleBytes) > 0.01 * bundleBytes)
            log(`run ${run}: bundle size ${size} differs from run 0 (${bundleBytes})`);
        bundleBytes ??= size;
        if (run === 0) {
            const plain = Attachment.decrypt(bundle); // consumes the key: last use of `bundle`
            const parsed = JSON.parse(new TextDecoder().decode(plain));
            counts = {
                room_keys: parsed.room_keys?.length ?? null,
                withheld: parsed.withheld?.length ?? null,
                plaintext_bytes: plain.length,
            };
        }
        bundle.free();
    }
    machine.close(); // frees the machine and its in-memory store

    log(
        `run ${run}: import ${importMs[run].toFixed(1)} ms (${imported}/${total}), ` +
            `build ${buildMs[run].toFixed(1)} ms, bundle ${bundleBytes ?? "-"} B | ` +
            `before ${fmtMem(before)} | after import ${fmtMem(afterImport)} | after build ${fmtMem(afterBuild)}`,
    );
}

const end = mem();
const peakRss = process.resourceUsage().maxRSS * 1024; // maxRSS is in KiB
log(`room_keys=${counts.room_keys} withheld=${counts.withheld} plaintext=${counts.plaintext_bytes} B; ` +
    `peak rss ${(peakRss / 2 ** 20).toFixed(1)} MiB (baseline ${(baseline.rss / 2 ** 20).toFixed(1)} MiB), end ${fmtMem(end)}`);

process.stdout.write(
    JSON.stringify({
        impl: IMPL,
        sessions,
        import_ms: { median: round(median(importMs)), runs: importMs.map(round) },
        build_ms: { median: round(median(buildMs)), runs: buildMs.map(round) },
        bundle_bytes: bundleBytes,
        peak_rss_bytes: peakRss,
        // extras
        room_keys: counts.room_keys,
        withheld: counts.withheld,
        bundle_plaintext_bytes: counts.plaintext_bytes,
        baseline_rss_bytes: baseline.rss,
        wasm_memory_bytes: wasmBytes(),
    }) + "\n",
);
