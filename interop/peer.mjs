#!/usr/bin/env node
// Entry point: node interop/peer.mjs --homeserver URL --shared-secret SECRET [--port 0] [--log-level warn]
//
// Prints exactly one line to stdout, {"listening": <port>}, once it accepts
// RPCs; everything else goes to stderr. See README.md.

// Order matters: the polyfill and console capture must be in place before
// matrix-js-sdk is evaluated, hence the dynamic import of the RPC layer below.
import "./lib/polyfill.mjs";
import { parseArgs } from "node:util";
import { captureConsole, makeLogger, setLogLevel } from "./lib/log.mjs";

const { values: args } = parseArgs({
    options: {
        homeserver: { type: "string" },
        "shared-secret": { type: "string" },
        port: { type: "string", default: "0" },
        "log-level": { type: "string", default: process.env.HEIRLOOM_PEER_LOG_LEVEL ?? "warn" },
    },
});

const log = makeLogger("peer");
if (!args.homeserver || !args["shared-secret"]) {
    process.stderr.write("usage: node peer.mjs --homeserver URL --shared-secret SECRET [--port N] [--log-level LEVEL]\n");
    process.exit(2);
}
setLogLevel(args["log-level"]);
captureConsole();

const { PeerServer } = await import("./lib/rpc.mjs");

let server;
let stopping = false;
async function shutdown(why) {
    if (stopping) return;
    stopping = true;
    log.info(`shutting down (${why})`);
    // Never hang the Go test's cleanup: force the exit if stopping stalls.
    setTimeout(() => process.exit(0), 5000).unref();
    await peers.stopAll();
    server?.close();
    server?.closeAllConnections?.();
    process.exit(0);
}

const peers = new PeerServer({
    homeserver: args.homeserver,
    sharedSecret: args["shared-secret"],
    onShutdown: () => shutdown("rpc"),
});

process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
// A background SDK failure (e.g. a key bundle download) must not kill the
// other users hosted here; log it and carry on.
process.on("unhandledRejection", (err) => log.error("unhandled rejection:", err));

server = await peers.listen(Number(args.port));
process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
