#!/usr/bin/env node
// The story `make demo` tells, against a running Synapse and heirloom:
//   1. a puppet writes in a `shared` room, invites a freshly registered Element-grade user
//      (matrix-js-sdk + Rust crypto), and that user's client prints the history it decrypted;
//   2. a js-sdk user writes, invites a puppet with client.invite() (which shares history), and
//      heirloom prints the puppet's decrypted history with keys_shared_by.
//
// Usage: node interop/demo.mjs --homeserver URL --shared-secret SECRET --heirloom URL --api-secret SECRET

import "./lib/polyfill.mjs";
import { parseArgs } from "node:util";
import { captureConsole, setLogLevel } from "./lib/log.mjs";

const { values: args } = parseArgs({
    options: {
        homeserver: { type: "string" },
        "shared-secret": { type: "string" },
        heirloom: { type: "string" },
        "api-secret": { type: "string" },
        domain: { type: "string", default: "localhost" },
    },
});
setLogLevel("error");
captureConsole();
const { Peer } = await import("./lib/client.mjs");

const say = (line = "") => process.stdout.write(`${line}\n`);
const stamp = Date.now().toString(36);

async function api(method, path, body) {
    const res = await fetch(`${args.heirloom}/_heirloom/v1${path}`, {
        method,
        headers: { Authorization: `Bearer ${args["api-secret"]}`, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${json.errcode} ${json.error}`);
    return json;
}

async function jsUser(name) {
    return Peer.register({
        homeserver: args.homeserver, sharedSecret: args["shared-secret"], username: `${name}_${stamp}`,
        password: `${name}-${stamp}-demo-password`, crossSigning: true, timeoutMs: 60000,
    });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
    const status = await api("GET", "/status");
    say(`heirloom ${status.version} is up; homeserver reachable: ${status.homeserver_reachable}`);

    // 1. Puppet → Element-grade user.
    const puppetId = `@heirloom_demo_${stamp}:${args.domain}`;
    const puppet = await api("PUT", `/puppets/${puppetId}`, { displayname: "Demo puppet" });
    say(`\n== A puppet shares its room's history with a new user ==`);
    say(`puppet ${puppet.user_id}, device ${puppet.device_id}, cross-signing master key ${puppet.master_key}`);
    const { room_id: roomA } = await api("POST", `/puppets/${puppetId}/rooms`, {
        name: "heirloom demo", encrypted: true, history_visibility: "shared",
    });
    const lines = ["Hello from the bridge!", "This room keeps its history.", "Whoever we invite can read it."];
    for (const body of lines) await api("POST", `/puppets/${puppetId}/rooms/${roomA}/messages`, { msgtype: "m.text", body });
    say(`the puppet wrote ${lines.length} encrypted messages in ${roomA}`);

    const alice = await jsUser("alice");
    say(`registered ${alice.userId} (matrix-js-sdk 43 with Rust crypto, cross-signing bootstrapped)`);
    const invite = await api("POST", `/puppets/${puppetId}/rooms/${roomA}/invite`, { user_id: alice.userId });
    const b = invite.bundle;
    say(`invite: bundle ${b.state}, ${b.sessions} session(s), ${b.withheld} withheld, ` +
        `delivered to ${b.devices.filter((d) => d.delivered).map((d) => d.device_id).join(", ") || "nobody"}`);
    await alice.join({ room_id: roomA, timeout_ms: 60000 });
    const seen = await alice.messages({ room_id: roomA, min_count: lines.length, timeout_ms: 60000 });
    say(`${alice.userId} joined and decrypted:`);
    for (const m of seen.messages) {
        say(`  ${m.decrypted ? "🔓" : "🔒"} <${m.sender}> ${m.body ?? m.error}` + (m.forwarder ? `   (keys shared by ${m.forwarder})` : ""));
    }

    // 2. Element-grade user → puppet.
    say(`\n== A user shares history with an invited puppet ==`);
    const bob = await jsUser("bob");
    const { room_id: roomB } = await bob.createRoom({ name: "bob's room", history_visibility: "shared", timeout_ms: 60000 });
    for (const body of ["Welcome, puppet.", "Here is what you missed."]) await bob.send({ room_id: roomB, body, timeout_ms: 60000 });
    const puppet2Id = `@heirloom_demo2_${stamp}:${args.domain}`;
    await api("PUT", `/puppets/${puppet2Id}`, { displayname: "Second demo puppet" });
    await bob.invite({ room_id: roomB, target: puppet2Id, timeout_ms: 60000 });
    say(`${bob.userId} wrote 2 messages and invited ${puppet2Id} with client.invite()`);
    const join = await api("POST", `/puppets/${puppet2Id}/rooms/${roomB}/join`, {});
    say(`the bridge asked the puppet to join: ${join.history}`);
    let events = [];
    for (let i = 0; i < 50; i++) {
        events = (await api("GET", `/puppets/${puppet2Id}/rooms/${roomB}/messages?limit=50`)).events
            .filter((ev) => ev.type === "m.room.message" || ev.type === "m.room.encrypted");
        if (events.filter((ev) => ev.decrypted).length >= 2) break;
        await sleep(200);
    }
    say(`heirloom's GET …/messages for the puppet:`);
    for (const ev of events) {
        say(`  ${ev.decrypted ? "🔓" : "🔒"} <${ev.sender}> ${ev.content?.body ?? ev.error}` +
            (ev.keys_shared_by ? `   (keys_shared_by ${ev.keys_shared_by})` : ""));
    }
    await alice.stop();
    await bob.stop();
    const ok = seen.messages.filter((m) => m.decrypted).length >= lines.length && events.filter((ev) => ev.decrypted).length >= 2;
    say(ok ? "\nHistory sharing works in both directions." : "\nHistory sharing did NOT work: see the logs.");
    process.exit(ok ? 0 : 1);
}

main().catch((err) => {
    process.stderr.write(`demo failed: ${err.stack ?? err}\n`);
    process.exit(1);
});
