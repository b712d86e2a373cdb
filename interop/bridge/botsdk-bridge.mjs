#!/usr/bin/env node
// A small appservice bridge on the upstream matrix-bot-sdk (0.8.0), for heirloom's gateway tests:
// the framework of many small bridges and bots, written before MSC4190 (its
// Intent.ensureRegistered registers ghosts with m.login.application_service and no
// inhibit_login). It runs with the library's encryption off: no cryptoStorage, so
// @matrix-org/matrix-sdk-crypto-nodejs, which the library requires at load time, is the stand-in
// in crypto-standin/ and never used.
//
//   node botsdk-bridge.mjs generate --registration FILE --url URL [--id ID] [--sender-localpart NAME] [--prefix PREFIX]
//       writes an appservice registration (the library has no generator: random tokens; the bot
//       is @NAME, ghosts are @PREFIX.*) and exits
//   node botsdk-bridge.mjs run --registration FILE --homeserver URL --domain DOMAIN --port N
//                              [--rpc-port 0] [--log-level warn] [--echo]
//       runs the bridge: the library's appservice listener on 127.0.0.1:N, and the control server
//       (control.mjs) heirloom's Go tests drive; --echo also records the events the bridge's own
//       users sent
//
// The control methods are those of bridge.mjs, each done the way a bot-sdk bridge does it:
//   register {user, displayname?}   Intent.ensureRegistered (+ setDisplayName)
//   createRoom {user, name?, invite?, preset?, is_direct?, initial_state?}   -> {room_id}
//   join {user, room_id}  leave {user, room_id}  invite {user, room_id, target}
//   sendText {user, room_id, body}  sendMessage {user, room_id, content, type?}   -> {event_id}
//   sendImage {user, room_id, data (base64), mimetype?, filename?, w?, h?}   -> {event_id, content_uri}
//   download {user?, mxc}  messages {user, room_id, limit?, dir?}
// Every room event the library emits ("room.event") is recorded for events and waitEvent.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import yaml from "js-yaml";
import { Appservice, LogLevel, LogService, MemoryStorageProvider, RichConsoleLogger } from "matrix-bot-sdk";

import { ControlServer, Recorder, required, serveUntilStopped, writeRegistration } from "./control.mjs";

function generate(argv) {
    const { values: args } = parseArgs({
        args: argv,
        options: {
            registration: { type: "string" },
            url: { type: "string" },
            id: { type: "string", default: "heirloom-botsdk-bridge" },
            "sender-localpart": { type: "string", default: "bsbridge" },
            prefix: { type: "string", default: "bsb_" },
        },
    });
    if (!args.registration || !args.url) {
        process.stderr.write("usage: node botsdk-bridge.mjs generate --registration FILE --url URL [--id ID] [--sender-localpart NAME] [--prefix PREFIX]\n");
        process.exit(2);
    }
    writeRegistration(args.registration, { id: args.id, url: args.url, senderLocalpart: args["sender-localpart"], prefix: args.prefix });
}

async function run(argv) {
    const { values: args } = parseArgs({
        args: argv,
        options: {
            registration: { type: "string" },
            homeserver: { type: "string" },
            domain: { type: "string" },
            port: { type: "string" },
            "rpc-port": { type: "string", default: "0" },
            "log-level": { type: "string", default: "warn" },
            echo: { type: "boolean", default: false },
        },
    });
    if (!args.registration || !args.homeserver || !args.domain || !args.port) {
        process.stderr.write("usage: node botsdk-bridge.mjs run --registration FILE --homeserver URL --domain DOMAIN --port N [--rpc-port N] [--log-level LEVEL]\n");
        process.exit(2);
    }
    LogService.setLogger(new RichConsoleLogger());
    LogService.setLevel(LogLevel.fromString(args["log-level"].toUpperCase(), LogLevel.WARN));
    const log = {
        info: (...m) => LogService.info("test-bridge", ...m),
        warn: (...m) => LogService.warn("test-bridge", ...m),
        error: (...m) => LogService.error("test-bridge", ...m),
    };

    const registration = yaml.load(readFileSync(args.registration, "utf8"));
    const appservice = new Appservice({
        homeserverName: args.domain,
        homeserverUrl: args.homeserver,
        port: Number(args.port),
        bindAddress: "127.0.0.1",
        registration,
        // Kept in memory: the bridge keeps no state of its own between runs.
        storage: new MemoryStorageProvider(),
    });
    const recorder = new Recorder();
    appservice.on("room.event", (_roomId, event) => {
        if (!args.echo && (event.sender === appservice.botUserId || appservice.isNamespacedUser(event.sender))) return;
        recorder.record(event);
    });
    await appservice.begin();

    const control = new Control(appservice, args.domain);
    const server = new ControlServer(recorder, (method, params) => control.call(method, params), log);
    await serveUntilStopped(server, Number(args["rpc-port"]), () => appservice.stop(), log);
}

// Control acts through the library's intents for the control server's methods.
class Control {
    constructor(appservice, domain) {
        this.appservice = appservice;
        this.domain = domain;
    }

    // intent is the library's Intent for a user of this bridge (the bot or a ghost).
    intent(params) {
        const user = required(params, "user");
        const userId = user.startsWith("@") ? user : `@${user}:${this.domain}`;
        if (userId !== this.appservice.botUserId && !this.appservice.isNamespacedUser(userId)) {
            throw new Error(`${userId} is neither the bot nor in this bridge's namespace`);
        }
        return this.appservice.getIntentForUserId(userId);
    }

    async call(method, params) {
        switch (method) {
            case "register": {
                const intent = this.intent(params);
                await intent.ensureRegistered();
                if (params.displayname) await intent.underlyingClient.setDisplayName(params.displayname);
                return { user_id: intent.userId };
            }
            case "createRoom":
                return this.createRoom(params);
            case "join":
                return { room_id: await this.intent(params).joinRoom(required(params, "room_id")) };
            case "leave":
                await this.intent(params).leaveRoom(required(params, "room_id"));
                return {};
            case "invite": {
                const intent = this.intent(params);
                await intent.ensureRegistered();
                await intent.underlyingClient.inviteUser(required(params, "target"), required(params, "room_id"));
                return {};
            }
            case "sendText":
                return { event_id: await this.intent(params).sendText(required(params, "room_id"), required(params, "body")) };
            case "sendMessage":
                return this.sendMessage(params);
            case "sendImage":
                return this.sendImage(params);
            case "download":
                return this.download(params);
            case "messages": {
                const roomId = encodeURIComponent(required(params, "room_id"));
                const query = { dir: params.dir ?? "b", limit: params.limit ?? 100 };
                return this.intent(params).underlyingClient.doRequest("GET", `/_matrix/client/v3/rooms/${roomId}/messages`, query);
            }
            default:
                throw new Error(`unknown method ${method}`);
        }
    }

    async createRoom(params) {
        const intent = this.intent(params);
        await intent.ensureRegistered();
        const options = { preset: params.preset ?? "private_chat" };
        for (const key of ["name", "invite", "is_direct", "initial_state", "topic"]) {
            if (params[key] !== undefined) options[key] = params[key];
        }
        return { room_id: await intent.underlyingClient.createRoom(options) };
    }

    async sendMessage(params) {
        const intent = this.intent(params);
        const roomId = required(params, "room_id");
        await intent.ensureRegisteredAndJoined(roomId);
        const type = params.type ?? "m.room.message";
        return { event_id: await intent.underlyingClient.sendEvent(roomId, type, required(params, "content")) };
    }

    async sendImage(params) {
        const intent = this.intent(params);
        const roomId = required(params, "room_id");
        await intent.ensureRegisteredAndJoined(roomId);
        const data = Buffer.from(required(params, "data"), "base64");
        const mimetype = params.mimetype ?? "image/png";
        const filename = params.filename ?? "image.png";
        const contentUri = await intent.underlyingClient.uploadContent(data, mimetype, filename);
        const info = { mimetype, size: data.length };
        if (params.w) info.w = params.w;
        if (params.h) info.h = params.h;
        const eventId = await intent.sendEvent(roomId, { msgtype: "m.image", body: filename, url: contentUri, info });
        return { event_id: eventId, content_uri: contentUri };
    }

    async download(params) {
        const mxc = required(params, "mxc");
        const client = params.user ? this.intent(params).underlyingClient : this.appservice.botClient;
        const { data, contentType } = await client.downloadContent(mxc);
        return {
            size: data.length,
            sha256: createHash("sha256").update(data).digest("hex"),
            content_type: contentType,
        };
    }
}

// Last, so that every class above is initialised before it runs.
const [command, ...rest] = process.argv.slice(2);
if (command === "generate") {
    generate(rest);
} else if (command === "run") {
    await run(rest);
} else {
    process.stderr.write("usage: node botsdk-bridge.mjs generate|run ... (see the header of botsdk-bridge.mjs)\n");
    process.exit(2);
}
