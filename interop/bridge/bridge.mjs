#!/usr/bin/env node
// A small appservice bridge on matrix-appservice-bridge (12.0.1, which runs on the
// @vector-im/matrix-bot-sdk fork), for heirloom's gateway tests.
//
//   node bridge.mjs generate --registration FILE --url URL [--id ID] [--sender-localpart NAME] [--prefix PREFIX]
//       writes an appservice registration with the library's own generator (random tokens;
//       the bot is @NAME, ghosts are @PREFIX.*) and exits
//   node bridge.mjs run --registration FILE --homeserver URL --domain DOMAIN --port N
//                       [--rpc-port 0] [--log-level warn] [--echo]
//       runs the bridge: the appservice listener on 127.0.0.1:N (the registration's url), and a
//       control server on 127.0.0.1 that heirloom's Go tests drive; --echo turns the library's
//       suppressEcho off, so onEvent also gets the events the bridge's own users sent
//
// The bridge does what a simple bridge does through the library's Bridge and Intent: its ghosts
// register, create and join rooms, invite, send text and images (uploaded media), read
// /messages and download media. It does nothing by itself on events: every event its onEvent
// handler receives is recorded with the time it arrived, for the tests to query. Its
// homeserver URL is a parameter, so heirloom's gateway can sit in front of the homeserver.
//
// Once both listeners accept connections, `run` prints one line {"listening": <control port>}
// to stdout. The library's logs go to stdout and stderr too: read stdout until that line.
// The control server (control.mjs) has events, waitEvent and shutdown, and (params):
//   register {user, displayname?}                  ensure the ghost (or the bot) is registered
//   createRoom {user, name?, invite?, preset?, is_direct?, initial_state?}   -> {room_id}
//   join {user, room_id}  leave {user, room_id}  invite {user, room_id, target}
//   sendText {user, room_id, body}                 -> {event_id}
//   sendMessage {user, room_id, content, type?, txn_id?}    -> {event_id} (txn_id: sent under it)
//   sendImage {user, room_id, data (base64), mimetype?, filename?, w?, h?}   -> {event_id, content_uri}
//   download {user?, mxc}                          -> {size, sha256, content_type}
//   messages {user, room_id, limit?, dir?}         -> the homeserver's /messages answer
//   request {user, method, path, query?, body?}    -> the answer of one client-server call made as the
//                                                  user through the library (path sent as given)
// `user` is a full user ID or a localpart; it must be the bot or in the registration's namespace.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import yaml from "js-yaml";
import { AppServiceRegistration, Bridge, Logger } from "matrix-appservice-bridge";

import { ControlServer, Recorder, escapeRegex, required, serveUntilStopped } from "./control.mjs";

function generate(argv) {
    const { values: args } = parseArgs({
        args: argv,
        options: {
            registration: { type: "string" },
            url: { type: "string" },
            id: { type: "string", default: "heirloom-test-bridge" },
            "sender-localpart": { type: "string", default: "jsbridge" },
            prefix: { type: "string", default: "jsb_" },
        },
    });
    if (!args.registration || !args.url) {
        process.stderr.write("usage: node bridge.mjs generate --registration FILE --url URL [--id ID] [--sender-localpart NAME] [--prefix PREFIX]\n");
        process.exit(2);
    }
    const reg = new AppServiceRegistration(args.url);
    reg.setId(args.id);
    reg.setHomeserverToken(AppServiceRegistration.generateToken());
    reg.setAppServiceToken(AppServiceRegistration.generateToken());
    reg.setSenderLocalpart(args["sender-localpart"]);
    reg.setRateLimited(false);
    reg.addRegexPattern("users", `@${escapeRegex(args.prefix)}.*`, true);
    reg.outputAsYaml(args.registration);
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
        process.stderr.write("usage: node bridge.mjs run --registration FILE --homeserver URL --domain DOMAIN --port N [--rpc-port N] [--log-level LEVEL]\n");
        process.exit(2);
    }
    Logger.configure({ console: args["log-level"] });
    const log = new Logger("test-bridge");

    const registration = AppServiceRegistration.fromObject(yaml.load(readFileSync(args.registration, "utf8")));
    if (!registration) throw new Error(`${args.registration} is not an appservice registration`);

    const recorder = new Recorder();
    const bridge = new Bridge({
        homeserverUrl: args.homeserver,
        domain: args.domain,
        registration,
        // No room/user/event stores: the bridge keeps no state of its own between runs.
        disableStores: true,
        suppressEcho: !args.echo,
        controller: {
            onUserQuery: () => ({}),
            onEvent: (request) => {
                recorder.record(request.getData());
            },
        },
    });
    await bridge.run(Number(args.port), undefined, "127.0.0.1");

    const control = new Control(bridge, registration, args.domain);
    const server = new ControlServer(recorder, (method, params) => control.call(method, params), log);
    await serveUntilStopped(server, Number(args["rpc-port"]), () => bridge.close(), log);
}

// Control acts through the library's intents for the control server's methods.
class Control {
    constructor(bridge, registration, domain) {
        this.bridge = bridge;
        this.registration = registration;
        this.domain = domain;
    }

    userId(params) {
        const user = required(params, "user");
        return user.startsWith("@") ? user : `@${user}:${this.domain}`;
    }

    // intent is the library's Intent for a user of this bridge (the bot or a ghost).
    intent(params) {
        const userId = this.userId(params);
        if (userId !== this.bridge.botUserId && !this.registration.isUserMatch(userId, true)) {
            throw new Error(`${userId} is neither the bot nor in this bridge's exclusive user namespace`);
        }
        return this.bridge.getIntent(userId);
    }

    async call(method, params) {
        switch (method) {
            case "register": {
                const intent = this.intent(params);
                await intent.ensureRegistered();
                if (params.displayname) await intent.setDisplayName(params.displayname);
                return { user_id: intent.userId };
            }
            case "createRoom": {
                const options = { preset: params.preset ?? "private_chat" };
                for (const key of ["name", "invite", "is_direct", "initial_state", "topic"]) {
                    if (params[key] !== undefined) options[key] = params[key];
                }
                return this.intent(params).createRoom({ createAsClient: true, options });
            }
            case "join":
                return { room_id: await this.intent(params).join(required(params, "room_id")) };
            case "leave":
                await this.intent(params).leave(required(params, "room_id"));
                return {};
            case "invite":
                await this.intent(params).invite(required(params, "room_id"), required(params, "target"));
                return {};
            case "sendText":
                return this.intent(params).sendText(required(params, "room_id"), required(params, "body"));
            case "sendMessage": {
                const intent = this.intent(params);
                const roomId = required(params, "room_id");
                const content = required(params, "content");
                if (params.txn_id) return this.sendWithTxn(intent, roomId, params.type ?? "m.room.message", content, params.txn_id);
                if (params.type && params.type !== "m.room.message") return intent.sendEvent(roomId, params.type, content);
                return intent.sendMessage(roomId, content);
            }
            case "sendImage":
                return this.sendImage(params);
            case "download":
                return this.download(params);
            case "messages": {
                const intent = this.intent(params);
                const roomId = encodeURIComponent(required(params, "room_id"));
                const query = { dir: params.dir ?? "b", limit: params.limit ?? 100 };
                return intent.matrixClient.doRequest("GET", `/_matrix/client/v3/rooms/${roomId}/messages`, query);
            }
            case "request": {
                const intent = this.intent(params);
                const query = params.query ?? null;
                return intent.matrixClient.doRequest(required(params, "method"), required(params, "path"), query, params.body ?? null);
            }
            default:
                throw new Error(`unknown method ${method}`);
        }
    }

    // sendWithTxn sends under the caller's transaction ID, as a bridge that retries a send after
    // an unclear failure does: the homeserver answers a repeated ID with the first event.
    async sendWithTxn(intent, roomId, type, content, txnId) {
        await intent.ensureRegistered();
        const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${encodeURIComponent(type)}/${encodeURIComponent(txnId)}`;
        return intent.matrixClient.doRequest("PUT", path, null, content);
    }

    async sendImage(params) {
        const intent = this.intent(params);
        const roomId = required(params, "room_id");
        const data = Buffer.from(required(params, "data"), "base64");
        const mimetype = params.mimetype ?? "image/png";
        const filename = params.filename ?? "image.png";
        const contentUri = await intent.uploadContent(data, { name: filename, type: mimetype });
        const info = { mimetype, size: data.length };
        if (params.w) info.w = params.w;
        if (params.h) info.h = params.h;
        const sent = await intent.sendMessage(roomId, { msgtype: "m.image", body: filename, url: contentUri, info });
        return { event_id: sent.event_id, content_uri: contentUri };
    }

    async download(params) {
        const mxc = required(params, "mxc");
        const client = params.user ? this.intent(params).matrixClient : this.bridge.getBot().getClient();
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
    process.stderr.write("usage: node bridge.mjs generate|run ... (see the header of bridge.mjs)\n");
    process.exit(2);
}
