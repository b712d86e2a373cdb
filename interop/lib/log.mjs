// Logging for the peer process. stdout is reserved for the single
// {"listening": port} line the Go side parses, so every log line goes to stderr.

import { format } from "node:util";

const LEVELS = { trace: 0, debug: 1, info: 2, warn: 3, error: 4, silent: 5 };

let threshold = LEVELS.warn;

export function setLogLevel(name) {
    if (!(name in LEVELS)) throw new Error(`unknown log level ${name}`);
    threshold = LEVELS[name];
}

function write(level, prefix, args) {
    if (LEVELS[level] < threshold) return;
    const stamp = new Date().toISOString().slice(11, 23);
    process.stderr.write(`${stamp} ${level.toUpperCase().padEnd(5)} [${prefix}] ${format(...args)}\n`);
}

/**
 * A logger in the shape matrix-js-sdk expects (its `Logger` interface), so each
 * client's SDK output carries the user it belongs to.
 */
export function makeLogger(prefix) {
    const at = (level) => (...args) => write(level, prefix, args);
    return {
        trace: at("trace"),
        debug: at("debug"),
        info: at("info"),
        warn: at("warn"),
        error: at("error"),
        log: at("debug"),
        getChild: (namespace) => makeLogger(`${prefix} ${namespace}`),
    };
}

/**
 * Parts of the SDK log through its global loglevel logger, which writes with
 * console.log/info/debug — i.e. to stdout. Route the whole console through our
 * level filter to stderr so nothing can corrupt the stdout protocol line.
 */
export function captureConsole() {
    const sdk = makeLogger("sdk");
    console.log = sdk.debug;
    console.debug = sdk.debug;
    console.info = sdk.info;
    console.trace = sdk.trace;
    console.warn = sdk.warn;
    console.error = sdk.error;
}
