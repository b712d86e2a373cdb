// An in-process stand-in for the homeserver's key endpoints, for reference.mjs: just enough of
// /keys/upload, /keys/query, /keys/claim, /keys/signatures/upload, /keys/device_signing/upload and
// /sendToDevice for two wasm OlmMachines to set up cross-signing, establish Olm and hand each other
// to-device messages, with no network. Every request an OlmMachine emits goes through serve().

import { RequestType, DeviceLists } from "@matrix-org/matrix-sdk-crypto-wasm";

export class KeyServer {
    devices = {}; // user → device → signed device keys
    otks = {}; // user → device → { key_id: key }
    masterKeys = {};
    selfSigningKeys = {};
    userSigningKeys = {};
    inbox = {}; // user → device → [to-device event]

    /** Sends every outgoing request of machine until it has none left. */
    async flush(machine) {
        for (let round = 0; round < 10; round++) {
            const requests = await machine.outgoingRequests();
            if (requests.length === 0) return;
            for (const req of requests) {
                const response = this.serve(machine, req.type, JSON.parse(req.body), req);
                await machine.markRequestAsSent(req.id, req.type, JSON.stringify(response));
            }
        }
        throw new Error("outgoing requests did not settle");
    }

    /** Sets up machine's cross-signing identity, signing its device. */
    async bootstrapCrossSigning(machine) {
        const reqs = await machine.bootstrapCrossSigning(true);
        if (reqs.uploadKeysRequest) {
            const r = reqs.uploadKeysRequest;
            const response = this.serve(machine, r.type, JSON.parse(r.body), r);
            await machine.markRequestAsSent(r.id, r.type, JSON.stringify(response));
        }
        const signing = JSON.parse(reqs.uploadSigningKeysRequest.body);
        const user = machine.userId.toString();
        if (signing.master_key) this.masterKeys[user] = signing.master_key;
        if (signing.self_signing_key) this.selfSigningKeys[user] = signing.self_signing_key;
        if (signing.user_signing_key) this.userSigningKeys[user] = signing.user_signing_key;
        const sigs = reqs.uploadSignaturesRequest;
        const response = this.serve(machine, RequestType.SignatureUpload, JSON.parse(sigs.body), sigs);
        if (sigs.id) await machine.markRequestAsSent(sigs.id, sigs.type, JSON.stringify(response));
        await this.flush(machine);
    }

    /** Delivers machine's queued to-device events to it. */
    async deliver(machine) {
        const user = machine.userId.toString();
        const device = machine.deviceId.toString();
        const events = this.inbox[user]?.[device] ?? [];
        if (this.inbox[user]) delete this.inbox[user][device];
        return machine.receiveSyncChanges(JSON.stringify(events), new DeviceLists(), new Map(), new Set());
    }

    serve(machine, type, body, req) {
        const me = machine.userId.toString();
        const myDevice = machine.deviceId.toString();
        switch (type) {
            case RequestType.KeysUpload: {
                if (body.device_keys) {
                    const dk = body.device_keys;
                    (this.devices[dk.user_id] ??= {})[dk.device_id] = dk;
                }
                const mine = ((this.otks[me] ??= {})[myDevice] ??= {});
                Object.assign(mine, body.one_time_keys ?? {});
                return { one_time_key_counts: { signed_curve25519: Object.keys(mine).length } };
            }
            case RequestType.KeysQuery: {
                const out = { device_keys: {}, master_keys: {}, self_signing_keys: {}, user_signing_keys: {}, failures: {} };
                for (const user of Object.keys(body.device_keys ?? {})) {
                    out.device_keys[user] = this.devices[user] ?? {};
                    if (this.masterKeys[user]) out.master_keys[user] = this.masterKeys[user];
                    if (this.selfSigningKeys[user]) out.self_signing_keys[user] = this.selfSigningKeys[user];
                    if (user === me && this.userSigningKeys[user]) out.user_signing_keys[user] = this.userSigningKeys[user];
                }
                return out;
            }
            case RequestType.KeysClaim: {
                const out = { one_time_keys: {}, failures: {} };
                for (const [user, devices] of Object.entries(body.one_time_keys ?? {})) {
                    for (const device of Object.keys(devices)) {
                        const keys = this.otks[user]?.[device] ?? {};
                        const keyId = Object.keys(keys)[0];
                        if (!keyId) continue;
                        ((out.one_time_keys[user] ??= {})[device] = { [keyId]: keys[keyId] });
                        delete keys[keyId];
                    }
                }
                return out;
            }
            case RequestType.SignatureUpload: {
                for (const [user, signed] of Object.entries(body)) {
                    for (const [keyId, obj] of Object.entries(signed)) {
                        const master = this.masterKeys[user];
                        const target = this.devices[user]?.[keyId] ??
                            (master && Object.keys(master.keys).some((id) => id.endsWith(":" + keyId)) ? master : null);
                        if (!target) continue;
                        for (const [signer, sigs] of Object.entries(obj.signatures ?? {})) {
                            Object.assign((target.signatures ??= {})[signer] ??= {}, sigs);
                        }
                    }
                }
                return { failures: {} };
            }
            case RequestType.ToDevice:
                this.queueToDevice(me, req);
                return {};
            default:
                return {};
        }
    }

    /** Queues a to-device request's messages for their recipients, sent by sender. */
    queueToDevice(sender, req) {
        const body = typeof req.body === "string" ? JSON.parse(req.body) : req.body;
        for (const [user, devices] of Object.entries(body.messages ?? {})) {
            for (const [device, content] of Object.entries(devices)) {
                ((this.inbox[user] ??= {})[device] ??= []).push({ sender, type: req.event_type, content });
            }
        }
    }
}
