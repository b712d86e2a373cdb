// Stand-in for @matrix-org/matrix-sdk-crypto-nodejs.
//
// matrix-appservice-bridge loads @vector-im/matrix-bot-sdk, and the upstream matrix-bot-sdk is
// the same code before the fork: both require the Rust crypto binding at load time
// (lib/e2ee/CryptoClient.js, RustEngine.js). The real package fetches its
// native library from outside the package registries in an install script, which cannot work
// here, and without it `require` fails ("Cannot find module
// @matrix-org/matrix-sdk-crypto-nodejs-linux-x64-gnu"). The test bridges run with the
// libraries' own encryption off (no `bridgeEncryption` option, no cryptoStorage): encryption is
// what heirloom's gateway adds in front of them. So this module only has to load; any use of it is a bug and
// throws, loudly.
"use strict";

function unavailable(name) {
    throw new Error(
        `@matrix-org/matrix-sdk-crypto-nodejs is a stand-in in heirloom's test bridges (${String(name)} was used): ` +
            "the bridges run with their own encryption off",
    );
}

// Property reads done by module loaders and interop helpers must not throw: `__esModule`
// (TypeScript's import helpers), `then` (await on a module), and symbols (inspection).
const benign = new Set(["__esModule", "then", "default"]);

module.exports = new Proxy(
    {},
    {
        get(_target, key) {
            if (typeof key === "symbol" || benign.has(key)) return undefined;
            return unavailable(key);
        },
        has() {
            return false;
        },
        ownKeys() {
            return [];
        },
        getOwnPropertyDescriptor() {
            return undefined;
        },
    },
);
