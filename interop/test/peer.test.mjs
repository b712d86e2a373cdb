// End-to-end check of peer.mjs against a real Synapse:
//   HEIRLOOM_TEST_HS=http://127.0.0.1:18558 HEIRLOOM_TEST_SHARED_SECRET=... node --test interop/test/
// Without those variables the suite is skipped (it needs a homeserver). make test runs it against
// the end-to-end suite's Synapse (e2e/interop_test.go), where a skip fails.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

const HS = process.env.HEIRLOOM_TEST_HS;
const SECRET = process.env.HEIRLOOM_TEST_SHARED_SECRET;
const skip = HS && SECRET ? false : "set HEIRLOOM_TEST_HS and HEIRLOOM_TEST_SHARED_SECRET to run against a Synapse";

const PEER = fileURLToPath(new URL("../peer.mjs", import.meta.url));
// Synapse keeps its users between runs: make names unique per run.
const RUN = Date.now().toString(36);

// A skipped test (rather than a skipped suite) so the runner reports "skipped 1", not "tests 0".
if (skip) test("peer.mjs against Synapse", { skip }, () => {});
else describe("peer.mjs against Synapse", () => {
    let child;
    let base;
    const stderr = [];

    async function rpc(method, params = {}) {
        const res = await fetch(`${base}/rpc/${method}`, { method: "POST", body: JSON.stringify(params) });
        const body = await res.json();
        if (res.status !== 200) throw new Error(`${method}: ${body.error}`);
        return body;
    }

    before(async () => {
        child = spawn(process.execPath, [PEER, "--homeserver", HS, "--shared-secret", SECRET, "--port", "0"], {
            stdio: ["ignore", "pipe", "pipe"],
        });
        child.stderr.on("data", (d) => stderr.push(d.toString()));
        const [line] = await Promise.race([
            once(createInterface({ input: child.stdout }), "line"),
            once(child, "exit").then(([code]) => {
                throw new Error(`peer exited with ${code}: ${stderr.join("")}`);
            }),
        ]);
        const { listening } = JSON.parse(line);
        assert.ok(Number.isInteger(listening) && listening > 0, `bad ready line ${line}`);
        base = `http://127.0.0.1:${listening}`;
    });

    after(async () => {
        if (!child || child.exitCode !== null) return;
        const exited = once(child, "exit");
        await rpc("shutdown").catch(() => child.kill("SIGTERM"));
        const timer = setTimeout(() => child.kill("SIGKILL"), 10000);
        const [code] = await exited;
        clearTimeout(timer);
        assert.equal(code, 0, `peer exit code; stderr:\n${stderr.join("")}`);
    });

    let alice;
    let bob;

    test("health and errors", async () => {
        const health = await fetch(`${base}/health`);
        assert.deepEqual(await health.json(), { ok: true });
        await assert.rejects(rpc("send", { user: "@nobody:localhost", room_id: "!x", body: "x" }), /unknown user/);
        await assert.rejects(rpc("noSuchMethod"), /unknown method/);
    });

    test("register with cross-signing", async () => {
        alice = await rpc("register", { username: `alice_${RUN}` });
        bob = await rpc("register", { username: `bob_${RUN}` });
        for (const u of [alice, bob]) {
            assert.match(u.user_id, /^@.+:.+$/);
            assert.ok(u.device_id && u.ed25519 && u.curve25519 && u.master_key, JSON.stringify(u));
        }
    });

    test("shared room: history shared on invite, decrypted by the invitee", async () => {
        const { room_id } = await rpc("createRoom", { user: alice.user_id, name: "shared", history_visibility: "shared" });
        const sent = [];
        for (const body of ["one", "two", "three"]) {
            sent.push((await rpc("send", { user: alice.user_id, room_id, body })).event_id);
        }

        await rpc("invite", { user: alice.user_id, room_id, target: bob.user_id });
        const invite = await rpc("waitForInvite", { user: bob.user_id, room_id });
        assert.equal(invite.inviter, alice.user_id);
        await rpc("join", { user: bob.user_id, room_id });
        await rpc("waitForMembership", { user: alice.user_id, room_id, target: bob.user_id, membership: "join" });

        const { messages, timed_out } = await rpc("messages", { user: bob.user_id, room_id, min_count: 3, timeout_ms: 20000 });
        assert.ok(!timed_out, `timed out: ${JSON.stringify(messages)}`);
        const byId = new Map(messages.map((m) => [m.event_id, m]));
        ["one", "two", "three"].forEach((body, i) => {
            const m = byId.get(sent[i]);
            assert.ok(m, `bob does not see ${body}`);
            assert.equal(m.decrypted, true);
            assert.equal(m.body, body);
            assert.equal(m.sender, alice.user_id);
            // js-sdk 43 exposes who shared the key (MatrixEvent.getKeyForwardingUser).
            assert.equal(m.forwarder, alice.user_id);
        });

        const status = await rpc("deviceStatus", {
            user: bob.user_id,
            target_user: alice.user_id,
            target_device: alice.device_id,
            wait_signed: true,
        });
        assert.equal(status.device.signedByOwner, true);
        assert.equal(status.cross_signing_master_key, alice.master_key);

        const { sessions } = await rpc("exportKeys", { user: alice.user_id, room_id });
        const used = new Set(sent.map((id) => byId.get(id).session_id));
        const mine = sessions.filter((s) => used.has(s.session_id));
        assert.ok(mine.length > 0, `no exported session for the sent messages: ${JSON.stringify(sessions)}`);
        for (const s of mine) {
            assert.equal(s.shared_history, true, JSON.stringify(s));
            assert.equal(s.sender_key, alice.curve25519);
        }
    });

    test("joined room: pre-join history stays unreadable", async () => {
        const { room_id } = await rpc("createRoom", { user: alice.user_id, name: "joined", history_visibility: "joined" });
        const secrets = ["before-1", "before-2", "before-3"];
        for (const body of secrets) await rpc("send", { user: alice.user_id, room_id, body });

        await rpc("invite", { user: alice.user_id, room_id, target: bob.user_id });
        await rpc("join", { user: bob.user_id, room_id });
        await rpc("waitForMembership", { user: alice.user_id, room_id, target: bob.user_id, membership: "join" });
        await rpc("send", { user: alice.user_id, room_id, body: "after-join" });

        const { messages, timed_out } = await rpc("messages", { user: bob.user_id, room_id, min_count: 1, timeout_ms: 20000 });
        assert.ok(!timed_out, `timed out: ${JSON.stringify(messages)}`);
        const readable = messages.filter((m) => m.decrypted).map((m) => m.body);
        assert.deepEqual(readable, ["after-join"]);
        for (const m of messages) {
            assert.ok(!secrets.includes(m.body), `bob read pre-join message ${JSON.stringify(m)}`);
            assert.equal(m.forwarder, undefined);
        }

        // Alice's pre-join session is marked not shareable.
        const { sessions } = await rpc("exportKeys", { user: alice.user_id, room_id });
        assert.ok(sessions.length > 0);
        for (const s of sessions) assert.equal(s.shared_history, false, JSON.stringify(s));
    });

    test("addDevice: a second device, not cross-signed, reached with `device`", async () => {
        const second = await rpc("addDevice", { user: bob.user_id });
        assert.equal(second.user_id, bob.user_id);
        assert.notEqual(second.device_id, bob.device_id);
        const signed = await rpc("deviceStatus", {
            user: alice.user_id, target_user: bob.user_id, target_device: bob.device_id, wait_signed: true,
        });
        assert.equal(signed.device.signedByOwner, true);
        const unsigned = await rpc("deviceStatus", { user: alice.user_id, target_user: bob.user_id, target_device: second.device_id });
        assert.ok(unsigned.device, "alice does not see bob's second device");
        assert.equal(unsigned.device.signedByOwner, false);

        const { room_id } = await rpc("createRoom", { user: alice.user_id, history_visibility: "shared" });
        await rpc("invite", { user: alice.user_id, room_id, target: bob.user_id, share_history: false });
        const invite = await rpc("waitForInvite", { user: bob.user_id, device: second.device_id, room_id });
        assert.equal(invite.inviter, alice.user_id);
        await assert.rejects(rpc("send", { user: bob.user_id, device: "NOSUCHDEVICE", room_id, body: "x" }), /unknown user/);
    });

    test("addDevice cross_signed: the new device is signed by its owner, under the same identity", async () => {
        const third = await rpc("addDevice", { user: bob.user_id, cross_signed: true });
        assert.notEqual(third.device_id, bob.device_id);
        const status = await rpc("deviceStatus", {
            user: alice.user_id, target_user: bob.user_id, target_device: third.device_id, wait_signed: true,
        });
        assert.equal(status.device.signedByOwner, true);
        assert.equal(status.cross_signing_master_key, bob.master_key);
    });

    test("memberEvent, kick and ban", async () => {
        const { room_id } = await rpc("createRoom", { user: alice.user_id, history_visibility: "shared" });
        await rpc("invite", { user: alice.user_id, room_id, target: bob.user_id, share_history: false });
        const invited = await rpc("memberEvent", { user: alice.user_id, room_id, target: bob.user_id });
        assert.equal(invited.membership, "invite");
        assert.equal(invited.sender, alice.user_id);
        assert.match(invited.event_id, /^\$/);
        await rpc("join", { user: bob.user_id, room_id });
        await rpc("waitForMembership", { user: alice.user_id, room_id, target: bob.user_id, membership: "join" });

        const kicked = await rpc("kick", { user: alice.user_id, room_id, target: bob.user_id, reason: "test" });
        assert.equal(kicked.membership, "leave");
        assert.equal(kicked.sender, alice.user_id);
        assert.notEqual(kicked.event_id, invited.event_id);

        await rpc("invite", { user: alice.user_id, room_id, target: bob.user_id, share_history: false });
        await rpc("join", { user: bob.user_id, room_id });
        await rpc("waitForMembership", { user: alice.user_id, room_id, target: bob.user_id, membership: "join" });
        const banned = await rpc("kick", { user: alice.user_id, room_id, target: bob.user_id, ban: true });
        assert.equal(banned.membership, "ban");
    });

    test("messages returns timed_out rather than failing", async () => {
        const { room_id } = await rpc("createRoom", { user: alice.user_id, history_visibility: "shared" });
        const res = await rpc("messages", { user: alice.user_id, room_id, min_count: 1, timeout_ms: 300 });
        assert.equal(res.timed_out, true);
        assert.deepEqual(res.messages, []);
    });
});
