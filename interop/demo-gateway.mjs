#!/usr/bin/env node
// The story `make demo-gateway` tells, against a running Synapse, ngircd and heirloom in gateway
// mode in front of heisenbridge (started here, with the demo's user as its owner):
//   1. the owner sets heisenbridge up in its control room, which heirloom made encrypted, and joins
//      an IRC channel; an IRC user's line reaches the encrypted channel room from a ghost whose
//      device is signed by its owner; the owner's encrypted reply reaches IRC as plaintext;
//   2. the owner's own encrypted room, plumbed to a second channel: the owner invites heisenbridge's
//      bot (sharing history), an IRC line arrives, and a friend the owner invites reads it all.
//
// Usage: node interop/demo-gateway.mjs --homeserver URL --shared-secret SECRET --gateway URL
//          --heisenbridge BIN --heisenbridge-port PORT --registration FILE --irc HOST:PORT --log FILE

import "./lib/polyfill.mjs";
import { spawn } from "node:child_process";
import { openSync } from "node:fs";
import { createConnection } from "node:net";
import { parseArgs } from "node:util";
import { captureConsole, setLogLevel } from "./lib/log.mjs";

const { values: args } = parseArgs({
    options: {
        homeserver: { type: "string" },
        "shared-secret": { type: "string" },
        gateway: { type: "string" },
        heisenbridge: { type: "string" },
        registration: { type: "string" },
        irc: { type: "string" },
        log: { type: "string" },
        "heisenbridge-port": { type: "string" },
        domain: { type: "string", default: "localhost" },
    },
});
setLogLevel("error");
captureConsole();
const { Peer } = await import("./lib/client.mjs");

const say = (line = "") => process.stdout.write(`${line}\n`);
const stamp = Date.now().toString(36);
const T = 60000;

async function jsUser(name) {
    return Peer.register({
        homeserver: args.homeserver, sharedSecret: args["shared-secret"], username: `${name}_${stamp}`,
        password: `${name}-${stamp}-demo-password`, crossSigning: true, timeoutMs: T,
    });
}

// A plain IRC client: raw lines over TCP.
class IRC {
    constructor(nick) {
        this.nick = nick;
        this.lines = [];
        this.waiters = [];
    }

    connect() {
        const [host, port] = args.irc.split(":");
        this.sock = createConnection({ host, port: Number(port) });
        let buf = "";
        this.sock.on("data", (data) => {
            buf += data.toString("utf8");
            let i;
            while ((i = buf.indexOf("\r\n")) >= 0) {
                const line = buf.slice(0, i);
                buf = buf.slice(i + 2);
                if (line.startsWith("PING ")) this.send(`PONG ${line.slice(5)}`);
                this.lines.push(line);
                for (const w of [...this.waiters]) w(line);
            }
        });
        this.send(`NICK ${this.nick}`);
        this.send(`USER ${this.nick} 0 * :heirloom demo`);
        return this.expect((l) => / 001 /.test(l), "the server's welcome");
    }

    send(line) {
        this.sock.write(`${line}\r\n`);
    }

    expect(match, what, timeoutMs = T) {
        const found = this.lines.find(match);
        if (found) return Promise.resolve(found);
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`IRC: timed out waiting for ${what}`)), timeoutMs);
            const w = (line) => {
                if (!match(line)) return;
                clearTimeout(timer);
                this.waiters.splice(this.waiters.indexOf(w), 1);
                resolve(line);
            };
            this.waiters.push(w);
        });
    }

    async join(channel) {
        this.send(`JOIN ${channel}`);
        await this.expect((l) => l.includes(` 366 `) && l.toLowerCase().includes(channel.toLowerCase()), `the names of ${channel}`);
    }
}

// command sends a command to heisenbridge in one of its rooms and waits for the bot's answer.
async function command(user, bot, roomId, text, want) {
    const { event_id } = await user.send({ room_id: roomId, body: text, timeout_ms: T });
    await user.waitForMessage({ room_id: roomId, sender: bot, body_contains: want, after_event_id: event_id, timeout_ms: T });
}

// accept waits for an invite and joins.
async function accept(user, roomId) {
    const inv = await user.waitForInvite({ room_id: roomId, timeout_ms: T });
    await user.join({ room_id: inv.room_id, timeout_ms: T });
    return inv;
}

// trust says what Element would say of the sender's device.
async function trust(user, userId) {
    await user.refreshKeys(userId);
    const devices = await user.crypto.getUserDeviceInfo([userId], true);
    const [deviceId] = [...(devices.get(userId)?.keys() ?? [])];
    const status = deviceId ? await user.crypto.getDeviceVerificationStatus(userId, deviceId) : null;
    return { deviceId, signed: Boolean(status?.signedByOwner) };
}

async function main() {
    const owner = await jsUser("owner");
    say(`registered ${owner.userId} (matrix-js-sdk 43 with Rust crypto, cross-signing bootstrapped)`);
    const hb = spawn(args.heisenbridge, ["-c", args.registration, "-l", "127.0.0.1", "-p", args["heisenbridge-port"], "-o", owner.userId, args.gateway], {
        stdio: ["ignore", openSync(args.log, "a"), openSync(args.log, "a")],
    });
    const stop = () => hb.kill("SIGTERM");
    process.on("exit", stop);
    say(`started heisenbridge (unmodified) with its homeserver URL pointing at heirloom: ${args.gateway}`);

    const irc = new IRC(`ircfriend${stamp.slice(-5)}`);
    await irc.connect();
    const channel = `#heirloom${stamp}`;
    await irc.join(channel);
    say(`an IRC user, ${irc.nick}, is in ${channel}`);

    say(`\n== An IRC channel in an encrypted room ==`);
    const control = await accept(owner);
    const bot = control.inviter;
    say(`${bot} opened a control room; the owner's client sees it encrypted: ${await owner.crypto.isEncryptionEnabledInRoom(control.room_id)}`);
    const network = `demo${stamp.slice(-4)}`;
    const mxNick = `owner${stamp.slice(-5)}`;
    const [host, port] = args.irc.split(":");
    await command(owner, bot, control.room_id, `ADDNETWORK ${network}`, "Network added.");
    await command(owner, bot, control.room_id, `ADDSERVER ${network} ${host} ${port}`, "Server added.");
    await command(owner, bot, control.room_id, `OPEN ${network}`, `You have been invited to ${network}`);
    const networkRoom = (await accept(owner)).room_id;
    await command(owner, bot, networkRoom, `NICK ${mxNick}`, `Nickname set to ${mxNick}`);
    await command(owner, bot, networkRoom, "CONNECT", "Welcome to the Internet Relay Network");
    await owner.send({ room_id: networkRoom, body: `JOIN ${channel}`, timeout_ms: T });
    const channelRoom = (await accept(owner)).room_id;
    say(`the owner set heisenbridge up with encrypted commands, and joined ${channel} as ${mxNick}`);

    irc.send(`PRIVMSG ${channel} :Hello from IRC!`);
    const line = await owner.waitForMessage({ room_id: channelRoom, body: "Hello from IRC!", timeout_ms: T });
    const ghostTrust = await trust(owner, line.sender);
    say(`IRC    <${irc.nick}> Hello from IRC!`);
    say(`Matrix 🔓 <${line.sender}> ${line.body}   encrypted: ${line.encrypted}, device ${ghostTrust.deviceId} ` +
        `signed by its owner: ${ghostTrust.signed}, Element's shield: ${line.shield_colour}`);
    await owner.send({ room_id: channelRoom, body: "Hello from Matrix, encrypted!", timeout_ms: T });
    const relayed = await irc.expect((l) => l.includes(`PRIVMSG ${channel} :Hello from Matrix, encrypted!`), "the owner's line");
    say(`IRC    ${relayed}`);

    say(`\n== Whoever the owner invites reads the history ==`);
    const channel2 = `#plumbed${stamp}`;
    await irc.join(channel2);
    const { room_id: plumbed } = await owner.createRoom({ name: "plumbed", history_visibility: "shared", timeout_ms: T });
    await owner.send({ room_id: plumbed, body: "Said before the bridge was here.", timeout_ms: T });
    await owner.invite({ room_id: plumbed, target: bot, timeout_ms: T });
    await command(owner, bot, networkRoom, `PLUMB ${plumbed} ${channel2}`, `Plumbed ${plumbed}`);
    await irc.expect((l) => l.includes(`JOIN`) && l.includes(channel2) && l.startsWith(`:${mxNick}!`), `${mxNick} joining ${channel2}`);
    irc.send(`PRIVMSG ${channel2} :An IRC line in the plumbed room.`);
    await owner.waitForMessage({ room_id: plumbed, body: "An IRC line in the plumbed room.", timeout_ms: T });
    say(`the owner invited heisenbridge's bot to an encrypted room with history shared, and plumbed it to ${channel2}`);
    const friend = await jsUser("friend");
    await owner.invite({ room_id: plumbed, target: friend.userId, timeout_ms: T });
    await friend.join({ room_id: plumbed, timeout_ms: T });
    const seen = await friend.messages({ room_id: plumbed, min_count: 2, timeout_ms: T });
    say(`${friend.userId}, invited by the owner, joined and decrypted:`);
    for (const m of seen.messages) {
        say(`  ${m.decrypted ? "🔓" : "🔒"} <${m.sender}> ${m.body ?? m.error}` + (m.forwarder ? `   (keys shared by ${m.forwarder})` : ""));
    }
    const ok = line.encrypted && ghostTrust.signed && seen.messages.filter((m) => m.decrypted).length >= 2;
    await owner.stop();
    await friend.stop();
    irc.send("QUIT :demo over");
    say(ok ? "\nheisenbridge's IRC channel is end-to-end encrypted, and its history is shared." : "\nThe gateway demo did NOT work: see the logs.");
    process.exit(ok ? 0 : 1);
}

main().catch((err) => {
    process.stderr.write(`demo failed: ${err.stack ?? err}\n`);
    process.exit(1);
});
