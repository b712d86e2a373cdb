// What the test bridges share: the recorder of the events a bridge received, the control server
// heirloom's Go tests drive it over, and small helpers. Each bridge (bridge.mjs on
// matrix-appservice-bridge, botsdk-bridge.mjs on the upstream matrix-bot-sdk) supplies the methods
// that act through its own framework; the recording and waiting methods are the same for both.
//
// The control server: POST /rpc/<method> with a JSON body, answered 200 with a JSON result or 500
// with {"error": "..."}; GET /health answers {"ok": true}. Methods every bridge has:
//   events {after?, room_id?, type?}               -> {events: [{seq, received_ts, event}], last_seq}
//   waitEvent {after?, room_id?, type?, sender?, state_key?, membership?, body?, msgtype?, timeout_ms?}
//                                                  -> the first recorded event that matches
//   shutdown {}
// received_ts is milliseconds since the epoch, with a fractional part.

import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { performance } from "node:perf_hooks";

import yaml from "js-yaml";

const DEFAULT_TIMEOUT_MS = 30000;
const MAX_RECORDED = 100000;

// Recorder keeps every event a bridge received, in order, with its arrival time.
export class Recorder {
    constructor() {
        this.entries = [];
        this.seq = 0;
        this.waiters = new Set();
    }

    record(event) {
        const entry = { seq: ++this.seq, received_ts: performance.timeOrigin + performance.now(), event };
        this.entries.push(entry);
        if (this.entries.length > MAX_RECORDED) this.entries.splice(0, this.entries.length - MAX_RECORDED);
        for (const waiter of this.waiters) waiter(entry);
    }

    list(filter) {
        return this.entries.filter((entry) => matches(entry, filter));
    }

    // wait resolves with the first entry (already recorded or arriving) that matches filter.
    wait(filter, timeoutMs) {
        const found = this.entries.find((entry) => matches(entry, filter));
        if (found) return Promise.resolve(found);
        return new Promise((resolve, reject) => {
            const waiter = (entry) => {
                if (!matches(entry, filter)) return;
                clearTimeout(timer);
                this.waiters.delete(waiter);
                resolve(entry);
            };
            const timer = setTimeout(() => {
                this.waiters.delete(waiter);
                reject(new Error(`timed out after ${timeoutMs} ms waiting for an event matching ${JSON.stringify(filter)}`));
            }, timeoutMs);
            this.waiters.add(waiter);
        });
    }
}

const FILTER_KEYS = ["after", "room_id", "type", "sender", "state_key", "membership", "body", "msgtype"];

function matches({ seq, event }, f) {
    if (f.after !== undefined && seq <= f.after) return false;
    if (f.room_id !== undefined && event.room_id !== f.room_id) return false;
    if (f.type !== undefined && event.type !== f.type) return false;
    if (f.sender !== undefined && event.sender !== f.sender) return false;
    if (f.state_key !== undefined && event.state_key !== f.state_key) return false;
    if (f.membership !== undefined && event.content?.membership !== f.membership) return false;
    if (f.body !== undefined && event.content?.body !== f.body) return false;
    if (f.msgtype !== undefined && event.content?.msgtype !== f.msgtype) return false;
    return true;
}

function filterOf(params) {
    const f = {};
    for (const key of FILTER_KEYS) if (params[key] !== undefined) f[key] = params[key];
    return f;
}

// ControlServer serves the control API: the recorder's methods itself, every other method through
// bridgeCall(method, params), which throws for a method it does not know.
export class ControlServer {
    constructor(recorder, bridgeCall, log) {
        this.recorder = recorder;
        this.bridgeCall = bridgeCall;
        this.log = log;
        this.onShutdown = () => {};
    }

    async call(method, params) {
        switch (method) {
            case "events": {
                const events = this.recorder.list(filterOf(params));
                return { events, last_seq: this.recorder.seq };
            }
            case "waitEvent":
                return this.recorder.wait(filterOf(params), timeoutOf(params));
            case "shutdown":
                setImmediate(() => this.onShutdown());
                return {};
            default:
                return this.bridgeCall(method, params);
        }
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
        const started = Date.now();
        try {
            const raw = await readBody(req);
            const params = raw.trim() ? JSON.parse(raw) : {};
            if (typeof params !== "object" || params === null || Array.isArray(params)) {
                throw new Error("request body must be a JSON object");
            }
            const result = await this.call(match[1], params);
            this.log.info(`${match[1]} ok in ${Date.now() - started} ms`);
            reply(200, result ?? {});
        } catch (err) {
            const message = describeError(err);
            this.log.warn(`${match[1]} failed after ${Date.now() - started} ms: ${message}`);
            reply(500, { error: message });
        }
    }
}

// serveUntilStopped starts the control server, prints the one line {"listening": <port>} the Go
// harness waits for, and stops the bridge (close) on SIGTERM, SIGINT or the shutdown method.
export async function serveUntilStopped(control, rpcPort, close, log) {
    let server;
    let stopping = false;
    const shutdown = async (why) => {
        if (stopping) return;
        stopping = true;
        log.info(`shutting down (${why})`);
        setTimeout(() => process.exit(0), 5000).unref();
        server?.close();
        server?.closeAllConnections?.();
        await Promise.resolve(close()).catch(() => {});
        process.exit(0);
    };
    control.onShutdown = () => shutdown("rpc");
    process.on("SIGTERM", () => shutdown("SIGTERM"));
    process.on("SIGINT", () => shutdown("SIGINT"));
    process.on("unhandledRejection", (err) => log.error("unhandled rejection:", err));
    server = await control.listen(rpcPort);
    process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
}

// writeRegistration writes an appservice registration with fresh random tokens: the bot is
// @senderLocalpart, the ghosts @prefix.* (exclusive).
export function writeRegistration(path, { id, url, senderLocalpart, prefix }) {
    const registration = {
        id,
        url,
        as_token: randomBytes(32).toString("hex"),
        hs_token: randomBytes(32).toString("hex"),
        sender_localpart: senderLocalpart,
        namespaces: { users: [{ exclusive: true, regex: `@${escapeRegex(prefix)}.*` }], aliases: [], rooms: [] },
        rate_limited: false,
    };
    writeFileSync(path, yaml.dump(registration), { mode: 0o600 });
}

// describeError keeps the homeserver's answer (errcode, error, status) of a failed request.
export function describeError(err) {
    if (err?.body?.errcode || err?.statusCode) {
        const body = typeof err.body === "object" ? JSON.stringify(err.body) : String(err.body ?? "");
        return `HTTP ${err.statusCode ?? "?"} ${body}`.trim();
    }
    return err?.message ?? String(err);
}

export function required(params, name) {
    const value = params[name];
    if (value === undefined || value === null || value === "") throw new Error(`missing required param "${name}"`);
    return value;
}

function timeoutOf(params) {
    const t = params.timeout_ms ?? DEFAULT_TIMEOUT_MS;
    if (typeof t !== "number" || !(t > 0)) throw new Error(`bad timeout_ms ${JSON.stringify(t)}`);
    return t;
}

export function escapeRegex(s) {
    return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        req.on("data", (c) => chunks.push(c));
        req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
        req.on("error", reject);
    });
}
