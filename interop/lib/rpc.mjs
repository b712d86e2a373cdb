// The HTTP control surface: POST /rpc/<method> with a JSON body, answered with
// 200 + JSON result or 500 + {"error": "..."}. One process hosts many users.

import { createServer } from "node:http";

import { Peer } from "./client.mjs";
import { makeLogger } from "./log.mjs";
import { required, timeoutOf } from "./util.mjs";

const log = makeLogger("peer");

// Methods that act as an already-registered user: the value is the Peer method.
const USER_METHODS = {
    createRoom: "createRoom",
    send: "send",
    invite: "invite",
    shareHistory: "shareHistory",
    sendBundle: "sendBundle",
    sendEncrypted: "sendEncrypted",
    sendToDeviceRaw: "sendToDeviceRaw",
    kick: "kick",
    toDeviceLog: "toDeviceLog",
    exportRaw: "exportRaw",
    resetCrossSigning: "resetCrossSigning",
    join: "join",
    leave: "leave",
    setState: "setState",
    setHistoryVisibility: "setHistoryVisibility",
    waitForInvite: "waitForInvite",
    waitForMembership: "waitForMembership",
    memberEvent: "memberEvent",
    kick: "kick",
    messages: "messages",
    waitForMessage: "waitForMessage",
    downloadMedia: "downloadMedia",
    downloadAttachment: "downloadAttachment",
    deviceStatus: "deviceStatus",
    exportKeys: "exportKeys",
};

export class PeerServer {
    constructor({ homeserver, sharedSecret, onShutdown }) {
        this.homeserver = homeserver;
        this.sharedSecret = sharedSecret;
        this.onShutdown = onShutdown;
        this.peers = new Map(); // user ID -> Peer
    }

    // A user's first device is keyed by its user ID; further devices (addDevice) by
    // "<user ID>|<device ID>", chosen with the `device` param.
    peer(userId, deviceId) {
        let peer = this.peers.get(userId);
        if (deviceId && peer?.deviceId !== deviceId) peer = this.peers.get(`${userId}|${deviceId}`);
        if (!peer) throw new Error(`unknown user ${userId}${deviceId ? ` device ${deviceId}` : ""}: register it first`);
        return peer;
    }

    async call(method, params) {
        if (method in USER_METHODS) {
            return this.peer(required(params, "user"), params.device)[USER_METHODS[method]](params);
        }
        switch (method) {
            case "register":
                return this.register(params);
            case "addDevice":
                return this.addDevice(params);
            case "stop": {
                const userId = required(params, "user");
                await this.peer(userId, params.device).stop();
                this.peers.delete(params.device ? `${userId}|${params.device}` : userId);
                return {};
            }
            case "shutdown":
                // Answer first; the process exits once the response is flushed.
                setImmediate(() => this.onShutdown());
                return {};
            default:
                throw new Error(`unknown method ${method}`);
        }
    }

    async register(params) {
        const username = required(params, "username").replace(/^@/, "").replace(/:.*$/, "");
        const existing = [...this.peers.values()].find((p) => p.userId.startsWith(`@${username}:`));
        if (existing) throw new Error(`${existing.userId} is already running in this peer`);
        const peer = await Peer.register({
            homeserver: this.homeserver,
            sharedSecret: this.sharedSecret,
            username,
            password: params.password ?? `${username}-interop-password`,
            crossSigning: params.cross_signing ?? true,
            timeoutMs: timeoutOf(params),
        });
        this.peers.set(peer.userId, peer);
        return peer.describe();
    }

    // addDevice logs another device of a registered user in. It is not signed by the user's
    // cross-signing identity (bootstrapping again would replace the identity) unless
    // `cross_signed` is true: then the user's first device, which holds the identity's private
    // keys, signs it with the self-signing key, as Element does once the new session is
    // verified. RPCs reach the new device with `device`.
    async addDevice(params) {
        const first = this.peer(required(params, "user"));
        const username = first.userId.slice(1).replace(/:.*$/, "");
        const timeoutMs = timeoutOf(params);
        const peer = await Peer.login({
            homeserver: this.homeserver,
            username,
            password: first.password,
            crossSigning: false,
            timeoutMs,
        });
        this.peers.set(`${peer.userId}|${peer.deviceId}`, peer);
        await peer.waitKeysUploaded(timeoutMs);
        if (params.cross_signed === true) await first.crossSignOwnDevice(peer.deviceId, timeoutMs);
        return peer.describe();
    }

    async stopAll() {
        for (const peer of this.peers.values()) {
            try {
                await peer.stop();
            } catch (err) {
                log.warn(`stopping ${peer.userId}:`, err);
            }
        }
        this.peers.clear();
    }

    listen(port) {
        const server = createServer((req, res) => this.handle(req, res));
        // Node closes an idle connection after 5 s by default, which races a Go client reusing it
        // ("connection reset by peer" on a POST, which Go does not retry): the client closes first.
        server.keepAliveTimeout = 0;
        return new Promise((resolve, reject) => {
            server.once("error", reject);
            server.listen(port, "127.0.0.1", () => resolve(server));
        });
    }

    async handle(req, res) {
        const reply = (status, body) => {
            res.writeHead(status, { "Content-Type": "application/json" });
            res.end(JSON.stringify(body));
        };
        const url = new URL(req.url, "http://127.0.0.1");
        if (req.method === "GET" && url.pathname === "/health") return reply(200, { ok: true });

        const match = /^\/rpc\/([A-Za-z]+)$/.exec(url.pathname);
        if (req.method !== "POST" || !match) return reply(404, { error: `no route ${req.method} ${url.pathname}` });
        const method = match[1];

        const started = Date.now();
        try {
            const raw = await readBody(req);
            const params = raw.trim() ? JSON.parse(raw) : {};
            if (typeof params !== "object" || params === null || Array.isArray(params)) {
                throw new Error("request body must be a JSON object");
            }
            const result = await this.call(method, params);
            log.info(`${method} ok in ${Date.now() - started} ms`);
            reply(200, result ?? {});
        } catch (err) {
            const message = err?.message ?? String(err);
            log.warn(`${method} failed after ${Date.now() - started} ms: ${message}`);
            reply(500, { error: message });
        }
    }
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        req.on("data", (c) => chunks.push(c));
        req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
        req.on("error", reject);
    });
}
