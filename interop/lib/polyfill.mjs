// matrix-js-sdk 43 targets Node >= 22, but our machines run Node 20. The only
// missing API it hits is Promise.withResolvers (the sync loop dies without it).
// This module must be evaluated before anything imports matrix-js-sdk.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve;
        let reject;
        const promise = new this((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}
