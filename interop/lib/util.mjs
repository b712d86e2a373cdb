// Small shared helpers: parameter checks and bounded waiting.

export const DEFAULT_TIMEOUT_MS = 30000;

export function required(params, name) {
    const value = params[name];
    if (value === undefined || value === null || value === "") {
        throw new Error(`missing required param "${name}"`);
    }
    return value;
}

export function timeoutOf(params) {
    const t = params.timeout_ms ?? DEFAULT_TIMEOUT_MS;
    if (typeof t !== "number" || !(t > 0)) throw new Error(`bad timeout_ms ${JSON.stringify(t)}`);
    return t;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Poll `check` until it returns something other than undefined/null/false, and
 * return that. Polling (rather than subscribing to SDK events) keeps each wait
 * obviously correct whichever of the SDK's many emitters the change arrives on;
 * 50 ms is far below anything the Go tests measure.
 */
export async function waitUntil(check, { timeoutMs, what, intervalMs = 50 }) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await check();
        if (value !== undefined && value !== null && value !== false) return value;
        if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}`);
        await sleep(Math.min(intervalMs, Math.max(1, deadline - Date.now())));
    }
}
