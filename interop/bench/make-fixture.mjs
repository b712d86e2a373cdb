#!/usr/bin/env node
// Testing aid for reference.mjs: writes a fixture of N megolm sessions in the
// key-export format (ExportedRoomKey / IMegolmSessionData), all in one room,
// 90 % flagged shared_history=true and 10 % false (every 10th session, so the
// split is exact). heirloom's Go benchmark writes its own fixture in the same
// format; this one only exists so the reference side can be run on its own.
//
// Why not let the wasm OlmMachine create the sessions: it can (shareRoomKey
// with no recipients + discardRoomKey), but only for its own device, one
// session per call. A session in export format is just bytes, so we build it:
//
//   session_key = unpadded base64 of
//     0x01 | u32 BE message index (0) | 128-byte ratchet (4 x 32, random)
//          | 32-byte ed25519 public key of the session
//   session_id  = unpadded base64 of that ed25519 public key
//
// The public key must be a real ed25519 point (vodozemac decompresses it), so
// it comes from crypto.generateKeyPairSync('ed25519'). Sender keys: a few fake
// devices, each with a real curve25519 identity key and ed25519 signing key.
//
// Usage: node interop/bench/make-fixture.mjs --sessions N [--out PATH]
//          [--room ROOM_ID] [--senders 8]
//          [--flags both|plain|m|msc3061]   (which history-flag keys to write;
//                                            default both = shared_history +
//                                            org.matrix.msc3061.shared_history)

import { generateKeyPairSync, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
    options: {
        sessions: { type: "string", default: "1000" },
        out: { type: "string" },
        room: { type: "string", default: "!bench:localhost" },
        senders: { type: "string", default: "8" },
        flags: { type: "string", default: "both" },
    },
});

const FLAG_KEYS = {
    both: ["shared_history", "org.matrix.msc3061.shared_history"],
    plain: ["shared_history"],
    m: ["m.shared_history"],
    msc3061: ["org.matrix.msc3061.shared_history"],
};

const b64 = (buf) => Buffer.from(buf).toString("base64").replace(/=+$/, "");

// Raw 32-byte public key: the last 32 bytes of the SPKI DER encoding
// (the 12-byte prefix is fixed for both ed25519 and x25519).
const rawPublic = (type) =>
    generateKeyPairSync(type).publicKey.export({ type: "spki", format: "der" }).subarray(-32);

/** One exported session (IMegolmSessionData shape). */
export function makeSession({ roomId, sender, shared, flagKeys = FLAG_KEYS.both }) {
    const sessionPublic = rawPublic("ed25519");
    const key = Buffer.alloc(1 + 4 + 128 + 32);
    key[0] = 0x01; // export format version; bytes 1..4 = index 0
    randomBytes(128).copy(key, 5);
    sessionPublic.copy(key, 133);
    const session = {
        algorithm: "m.megolm.v1.aes-sha2",
        room_id: roomId,
        sender_key: sender.curve25519,
        session_id: b64(sessionPublic),
        session_key: b64(key),
        sender_claimed_keys: { ed25519: sender.ed25519 },
        forwarding_curve25519_key_chain: [],
    };
    for (const k of flagKeys) session[k] = shared;
    return session;
}

export function makeSenders(n) {
    return Array.from({ length: n }, () => ({
        curve25519: b64(rawPublic("x25519")),
        ed25519: b64(rawPublic("ed25519")),
    }));
}

export function makeFixture({ sessions, roomId, senders = 8, flags = "both" }) {
    const flagKeys = FLAG_KEYS[flags];
    if (!flagKeys) throw new Error(`--flags must be one of ${Object.keys(FLAG_KEYS).join(", ")}`);
    const devs = makeSenders(senders);
    return Array.from({ length: sessions }, (_, i) =>
        makeSession({ roomId, sender: devs[i % devs.length], shared: i % 10 !== 0, flagKeys }),
    );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
    const n = Number(args.sessions);
    if (!Number.isInteger(n) || n < 1) throw new Error("--sessions must be a positive integer");
    const fixture = makeFixture({ sessions: n, roomId: args.room, senders: Number(args.senders), flags: args.flags });
    const json = JSON.stringify(fixture);
    if (args.out) {
        writeFileSync(args.out, json);
        process.stderr.write(`wrote ${n} sessions (${json.length} bytes) to ${args.out}\n`);
    } else {
        process.stdout.write(json + "\n");
    }
}
