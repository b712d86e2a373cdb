// One human-like Matrix user: a matrix-js-sdk MatrixClient with Rust crypto,
// exactly as Element Web runs it, minus the UI. Every method here backs one RPC.
//
// import "./polyfill.mjs" must have run before this module; lib/rpc.mjs and
// peer.mjs make sure of that.

import { createHash } from "node:crypto";

import * as RustSdkCryptoJs from "@matrix-org/matrix-sdk-crypto-wasm";
import { ClientEvent, createClient, SyncState } from "matrix-js-sdk";
import { EventShieldColour, EventShieldReason } from "matrix-js-sdk/lib/crypto-api/index.js";

import { makeLogger } from "./log.mjs";
import { passwordLogin, registerWithSharedSecret } from "./synapse.mjs";
import { required, sleep, timeoutOf, waitUntil } from "./util.mjs";

const MEGOLM = "m.megolm.v1.aes-sha2";
const VISIBILITIES = ["shared", "joined", "invited", "world_readable"];
// The three spellings of the MSC3061/MSC4268 flag seen in exports (docs/history-sharing.md, "History flag").
const SHARED_HISTORY_KEYS = ["shared_history", "m.shared_history", "org.matrix.msc3061.shared_history"];

export class Peer {
    constructor({ client, userId, deviceId, password, homeserver, logger }) {
        this.client = client;
        this.logger = logger;
        this.userId = userId;
        this.deviceId = deviceId;
        this.password = password;
        this.homeserver = homeserver;
        // Every to-device message this device received, as the Rust crypto handed it over
        // (decrypted where it was encrypted): for tests of what a puppet sent, or did not send.
        this.toDevice = [];
        client.on(ClientEvent.ReceivedToDeviceMessage, ({ message, encryptionInfo }) => {
            this.toDevice.push({
                type: message.type,
                sender: message.sender,
                encrypted: encryptionInfo != null,
                sender_curve25519: encryptionInfo?.senderCurve25519KeyBase64,
                room_id: message.content?.room_id,
                session_id: message.content?.session_id,
                received_at: Date.now(),
            });
        });
    }

    get crypto() {
        const crypto = this.client.getCrypto();
        if (!crypto) throw new Error(`${this.userId}: crypto is not initialised`);
        return crypto;
    }

    /** Create (or reuse) the account, log a fresh device in, set up E2EE and start syncing. */
    static async register({ homeserver, sharedSecret, username, password, crossSigning, timeoutMs }) {
        await registerWithSharedSecret(homeserver, sharedSecret, username, password);
        return Peer.login({ homeserver, username, password, crossSigning, timeoutMs });
    }

    /**
     * Log a new device of an existing account in, set up E2EE and start syncing. Without
     * crossSigning the device is not signed by the account's identity: a second device of a
     * cross-signed user logged in this way is the "unverified session" Element warns about.
     */
    static async login({ homeserver, username, password, crossSigning, timeoutMs }) {
        const login = await passwordLogin(homeserver, username, password);
        const logger = makeLogger(login.user_id);

        const client = createClient({
            baseUrl: homeserver,
            userId: login.user_id,
            deviceId: login.device_id,
            accessToken: login.access_token,
            logger,
        });
        const peer = new Peer({ client, userId: login.user_id, deviceId: login.device_id, password, homeserver, logger });

        // In-memory store: each peer lives for one test run, and this keeps the
        // process free of IndexedDB shims.
        await client.initRustCrypto({ useIndexedDB: false });

        if (crossSigning) {
            // Element does this at first login. The inviter's device must be
            // signed by its own identity or js-sdk silently skips history
            // sharing, and the invitee needs an identity or nothing is sent to it.
            await peer.bootstrapCrossSigning();
        }

        await peer.startSync(timeoutMs);
        if (crossSigning) {
            // js-sdk shares history only once the Rust crypto sees this device verified by the
            // user's own identity, which it learns from its next key query after the upload:
            // wait for it, or an early invite() silently shares nothing.
            await waitUntil(async () => (await peer.crypto.getUserVerificationStatus(login.user_id)).isCrossSigningVerified(),
                { timeoutMs, what: `${login.user_id} to see its own identity verified` });
        }
        return peer;
    }

    async startSync(timeoutMs) {
        const ready = new Promise((resolve, reject) => {
            const onSync = (state, _prev, data) => {
                if (state === SyncState.Prepared || state === SyncState.Syncing) {
                    this.client.off("sync", onSync);
                    resolve();
                } else if (state === SyncState.Error) {
                    this.client.off("sync", onSync);
                    reject(new Error(`${this.userId}: sync failed: ${data?.error?.message ?? "unknown error"}`));
                }
            };
            this.client.on("sync", onSync);
        });
        await this.client.startClient({
            // Enough for a test room's whole history in the first sync; `messages`
            // paginates for anything older.
            initialSyncLimit: 50,
            // Full member lists from the start: encryption needs every member's
            // devices, and tests inspect memberships directly.
            lazyLoadMembers: false,
        });
        await withTimeout(ready, timeoutMs, `${this.userId} to finish its first sync`);
    }

    async describe() {
        const keys = await this.crypto.getOwnDeviceKeys();
        const masterKey = await this.crypto.getCrossSigningKeyId();
        const out = {
            user_id: this.userId,
            device_id: this.deviceId,
            ed25519: keys.ed25519,
            curve25519: keys.curve25519,
        };
        if (masterKey) out.master_key = masterKey;
        return out;
    }

    // ---- rooms --------------------------------------------------------------

    room(roomId) {
        return this.client.getRoom(roomId);
    }

    /**
     * Wait until the local copy of the room shows us joined (so its state is synced).
     *
     * A /sync that races with a membership change of ours (Synapse logs "User membership
     * change between getting rooms and current token") can carry a stale member event of ours,
     * and js-sdk then recalculates our membership from it: the local copy says "invite" while
     * the homeserver has us joined, until another member event of ours comes, which may be
     * never. So while the local copy disagrees, ask the homeserver for our member event every
     * few seconds and take it if it says "join". On a timeout the error names both views.
     */
    async waitJoined(roomId, timeoutMs) {
        const started = Date.now();
        let asked = 0;
        let server = "not asked";
        return waitUntil(async () => {
            const room = this.room(roomId);
            if (room?.getMyMembership() === "join") return room;
            if (room && Date.now() - started > 1000 && Date.now() - asked > 3000) {
                asked = Date.now();
                server = await this.refreshOwnMembership(room);
            }
            return undefined;
        }, {
            timeoutMs,
            what: () => `${this.userId} to see itself joined to ${roomId} (local copy: ${this.room(roomId)?.getMyMembership() ?? "no room"}; homeserver: ${server})`,
        });
    }

    /** Take our member event from /members if it says "join"; returns what the homeserver said. */
    async refreshOwnMembership(room) {
        let chunk;
        try {
            ({ chunk } = await this.client.members(room.roomId));
        } catch (err) {
            return `/members refused: ${err.errcode ?? err.message}`;
        }
        const raw = chunk.find((ev) => ev.state_key === this.userId);
        const membership = raw?.content?.membership ?? "no member event";
        if (membership !== "join") return membership;
        const local = room.currentState.getStateEvents("m.room.member", this.userId);
        this.logger.warn(`${room.roomId}: the synced state had our ${local?.getContent().membership ?? "missing"} membership (${local?.getId()}); took our join ${raw.event_id} from /members`);
        room.currentState.setStateEvents([this.client.getEventMapper()(raw)]);
        room.recalculate();
        return `join (${raw.event_id})`;
    }

    async createRoom(params) {
        const timeoutMs = timeoutOf(params);
        const visibility = required(params, "history_visibility");
        if (!VISIBILITIES.includes(visibility)) throw new Error(`bad history_visibility ${visibility}`);
        const encrypted = params.encrypted ?? true;

        const initialState = [
            { type: "m.room.history_visibility", state_key: "", content: { history_visibility: visibility } },
        ];
        if (encrypted) initialState.push({ type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } });

        const { room_id: roomId } = await this.client.createRoom({
            name: params.name,
            preset: params.preset ?? "private_chat",
            invite: params.invite ?? [],
            // A DM as Element starts one: the invite says is_direct.
            ...(params.is_direct ? { is_direct: true } : {}),
            initial_state: initialState,
        });

        // Later calls (send, invite) read the local room copy: make sure it is
        // there with the state we asked for, and that the crypto layer knows the
        // room is encrypted (otherwise js-sdk would send in the clear).
        await waitUntil(async () => {
            const room = this.room(roomId);
            if (room?.getMyMembership() !== "join") return false;
            if (room.getHistoryVisibility() !== visibility) return false;
            if (encrypted && !(await this.crypto.isEncryptionEnabledInRoom(roomId))) return false;
            return true;
        }, { timeoutMs, what: `${this.userId} to sync new room ${roomId}` });
        return { room_id: roomId };
    }

    async send(params) {
        const roomId = required(params, "room_id");
        await this.waitForRoomCrypto(roomId, timeoutOf(params));
        const res = await this.client.sendMessage(roomId, { msgtype: "m.text", body: required(params, "body") });
        return { event_id: res.event_id };
    }

    /**
     * js-sdk decides whether to encrypt from the crypto layer's view of the room.
     * If the room has an m.room.encryption event, wait until crypto has seen it,
     * so a message is never sent in the clear by accident.
     */
    async waitForRoomCrypto(roomId, timeoutMs) {
        const room = await this.waitJoined(roomId, timeoutMs);
        if (room.currentState.getStateEvents("m.room.encryption", "")) {
            await waitUntil(() => this.crypto.isEncryptionEnabledInRoom(roomId), {
                timeoutMs,
                what: `${this.userId}'s crypto to see ${roomId} as encrypted`,
            });
        }
    }

    async invite(params) {
        const roomId = required(params, "room_id");
        const target = required(params, "target");
        // client.invite() reads history visibility from the local room copy and
        // assumes "shared" for an unknown room: make sure the state is synced.
        await this.waitJoined(roomId, timeoutOf(params));
        // In js-sdk 43 invite() itself shares history (MSC4268) whenever the
        // room's current visibility is shared/world_readable; no opt-in exists.
        // share_history: false sends a bare invite instead, so a test can share
        // the history later (a bundle that arrives after the join).
        if (params.share_history === false) {
            await this.client.http.authedRequest("POST", `/rooms/${encodeURIComponent(roomId)}/invite`, undefined, { user_id: target });
        } else {
            await this.client.invite(roomId, target);
        }
        return {};
    }

    // sendBundle sends target a hand-made key bundle: `plaintext` (the bundle JSON, any bytes) is
    // encrypted with the Rust crypto's attachment encryption, uploaded, and its details sent to
    // every device of target over Olm (with sender_device_keys), as m.room_key_bundle or `type`.
    // tamper_hash replaces the file's SHA-256 with another. For hostile-bundle tests.
    async sendBundle(params) {
        const roomId = required(params, "room_id");
        const target = required(params, "target");
        const plaintext = required(params, "plaintext");
        const encrypted = RustSdkCryptoJs.Attachment.encrypt(new TextEncoder().encode(plaintext));
        const data = encrypted.encryptedData;
        const file = JSON.parse(encrypted.mediaEncryptionInfo);
        const upload = await this.client.uploadContent(Buffer.from(data), { type: "application/octet-stream" });
        file.url = upload.content_uri;
        if (params.tamper_hash) {
            file.hashes.sha256 = Buffer.alloc(32, 7).toString("base64").replace(/=+$/, "");
        }
        const targets = await this.devicesOf(target);
        await this.client.encryptAndSendToDevice(params.type ?? "m.room_key_bundle", targets, { room_id: roomId, file });
        return { mxc: upload.content_uri, bytes: data.length, devices: targets.length };
    }

    // devicesOf lists target's devices, downloaded fresh, as encryptAndSendToDevice wants them.
    async devicesOf(target) {
        const devices = await this.crypto.getUserDeviceInfo([target], true);
        const targets = [...(devices.get(target)?.keys() ?? [])].map((deviceId) => ({ userId: target, deviceId }));
        if (targets.length === 0) throw new Error(`${target} has no devices`);
        return targets;
    }

    // sendEncrypted sends any content, Olm-encrypted, as `type` to every device of target.
    async sendEncrypted(params) {
        const target = required(params, "target");
        const targets = await this.devicesOf(target);
        await this.client.encryptAndSendToDevice(required(params, "type"), targets, required(params, "content"));
        return { devices: targets.length };
    }

    // kick removes target from the room: for an invited target, it rescinds the invite.
    async kick(params) {
        await this.client.kick(required(params, "room_id"), required(params, "target"), params.reason);
        return {};
    }

    // sendToDeviceRaw sends any content, unencrypted, as `type` to one device of target (e.g. a
    // hand-made m.room_key_request).
    async sendToDeviceRaw(params) {
        const target = required(params, "target");
        const device = required(params, "target_device");
        await this.client.sendToDevice(required(params, "type"), new Map([[target, new Map([[device, required(params, "content")]])]]));
        return {};
    }

    // toDeviceLog lists the to-device messages this device received (of `type`, if given).
    toDeviceLog(params) {
        const messages = this.toDevice.filter((m) => !params.type || m.type === params.type);
        return { messages };
    }

    // exportRaw returns this user's exported room keys for a room as the key export holds them.
    async exportRaw(params) {
        const roomId = required(params, "room_id");
        const all = JSON.parse(await this.crypto.exportRoomKeysAsJson());
        return { sessions: all.filter((k) => k.room_id === roomId) };
    }

    // bootstrapCrossSigning creates and publishes a new cross-signing identity for this user and
    // signs this device with it, answering the user-interactive auth with the password.
    async bootstrapCrossSigning() {
        await this.crypto.bootstrapCrossSigning({
            setupNewCrossSigning: true,
            authUploadDeviceSigningKeys: async (makeRequest) => {
                await makeRequest({
                    type: "m.login.password",
                    identifier: { type: "m.id.user", user: this.userId },
                    password: this.password,
                });
            },
        });
    }

    // resetCrossSigning replaces this user's cross-signing identity with a new one.
    async resetCrossSigning(params) {
        const old = await this.crypto.getCrossSigningKeyId();
        await this.bootstrapCrossSigning();
        await waitUntil(async () => {
            const now = await this.crypto.getCrossSigningKeyId();
            return now && now !== old && (await this.crypto.getUserVerificationStatus(this.userId)).isCrossSigningVerified();
        }, { timeoutMs: timeoutOf(params), what: `${this.userId} to see its new identity verified` });
        return { master_key: await this.crypto.getCrossSigningKeyId() };
    }

    // shareHistory builds, uploads and sends a key bundle to target now, as
    // invite() does before inviting (the Rust crypto's own MSC4268 sender).
    async shareHistory(params) {
        const roomId = required(params, "room_id");
        const target = required(params, "target");
        await this.waitJoined(roomId, timeoutOf(params));
        await this.client.getCrypto().shareRoomHistoryWithUser(roomId, target);
        return {};
    }

    async join(params) {
        const roomId = required(params, "room_id");
        const timeoutMs = timeoutOf(params);
        // joinRoom() only accepts a key bundle when the local copy shows us
        // invited (that is where it learns who the inviter is): joining before
        // the invite has synced silently loses the shared history.
        if (params.wait_invite !== false) {
            await waitUntil(() => {
                const m = this.room(roomId)?.getMyMembership();
                return m === "invite" || m === "join";
            }, { timeoutMs, what: `${this.userId} to see its invite to ${roomId}` });
        }
        const room = await this.client.joinRoom(roomId);
        await this.waitJoined(room.roomId, timeoutMs);
        return { room_id: room.roomId };
    }

    async leave(params) {
        const roomId = required(params, "room_id");
        await this.client.leave(roomId);
        await waitUntil(() => {
            const m = this.room(roomId)?.getMyMembership();
            return m === undefined || m === "leave";
        }, { timeoutMs: timeoutOf(params), what: `${this.userId} to see itself leave ${roomId}` });
        return {};
    }

    async setState(params) {
        const roomId = required(params, "room_id");
        const type = required(params, "type");
        const stateKey = params.state_key ?? "";
        const res = await this.client.sendStateEvent(roomId, type, params.content ?? {}, stateKey);
        // Wait for the echo so that a following call sees the new state locally.
        await waitUntil(() => this.room(roomId)?.currentState.getStateEvents(type, stateKey)?.getId() === res.event_id, {
            timeoutMs: timeoutOf(params),
            what: `${this.userId} to sync its ${type} state event in ${roomId}`,
        });
        return { event_id: res.event_id };
    }

    async setHistoryVisibility(params) {
        const visibility = required(params, "visibility");
        if (!VISIBILITIES.includes(visibility)) throw new Error(`bad visibility ${visibility}`);
        return this.setState({
            ...params,
            type: "m.room.history_visibility",
            state_key: "",
            content: { history_visibility: visibility },
        });
    }

    async waitForInvite(params) {
        const wanted = params.room_id;
        return waitUntil(() => {
            const rooms = wanted ? [this.room(wanted)] : this.client.getRooms();
            for (const room of rooms) {
                if (room?.getMyMembership() === "invite") {
                    const inviter = room.getMember(this.userId)?.events.member?.getSender() ?? null;
                    return { room_id: room.roomId, inviter };
                }
            }
            return undefined;
        }, { timeoutMs: timeoutOf(params), what: `${this.userId} to receive an invite${wanted ? ` to ${wanted}` : ""}` });
    }

    async waitForMembership(params) {
        const roomId = required(params, "room_id");
        const target = required(params, "target");
        const membership = required(params, "membership");
        await waitUntil(() => this.room(roomId)?.getMember(target)?.membership === membership, {
            timeoutMs: timeoutOf(params),
            what: `${this.userId} to see ${target} with membership ${membership} in ${roomId}`,
        });
        return {};
    }

    /** The target's current m.room.member event in the room, as this user's copy shows it, with the one it replaced. */
    async memberEvent(params) {
        const roomId = required(params, "room_id");
        const target = required(params, "target");
        const ev = await waitUntil(() => this.room(roomId)?.currentState.getStateEvents("m.room.member", target), {
            timeoutMs: timeoutOf(params),
            what: `${this.userId} to see a member event of ${target} in ${roomId}`,
        });
        const out = { event_id: ev.getId(), membership: ev.getContent().membership, sender: ev.getSender() };
        if (ev.getContent().reason !== undefined) out.reason = ev.getContent().reason;
        // The member event this one replaced, and its membership (from unsigned.prev_content).
        const replaced = ev.getUnsigned().replaces_state;
        if (replaced !== undefined) out.replaces_state = replaced;
        if (ev.getPrevContent().membership !== undefined) out.prev_membership = ev.getPrevContent().membership;
        return out;
    }

    /** Kick (or with ban: true, ban) target, and wait until the local copy shows it. */
    async kick(params) {
        const roomId = required(params, "room_id");
        const target = required(params, "target");
        const ban = params.ban === true;
        if (ban) await this.client.ban(roomId, target, params.reason);
        else await this.client.kick(roomId, target, params.reason);
        const want = ban ? "ban" : "leave";
        await waitUntil(() => this.room(roomId)?.getMember(target)?.membership === want, {
            timeoutMs: timeoutOf(params),
            what: `${this.userId} to see ${target} with membership ${want} in ${roomId}`,
        });
        return this.memberEvent(params);
    }

    /**
     * Sign another device of this user with the user's self-signing key (this device must hold
     * the cross-signing private keys: the one that bootstrapped them), and wait until the
     * homeserver serves the signature.
     */
    async crossSignOwnDevice(deviceId, timeoutMs) {
        const ssk = await this.crypto.getCrossSigningKeyId("self_signing_key");
        if (!ssk) throw new Error(`${this.userId} ${this.deviceId} holds no self-signing key`);
        await waitUntil(async () => {
            await this.refreshKeys(this.userId);
            return (await this.crypto.getUserDeviceInfo([this.userId])).get(this.userId)?.has(deviceId);
        }, { timeoutMs, intervalMs: 200, what: `${this.userId} ${this.deviceId} to see its new device ${deviceId}` });
        await this.crypto.crossSignDevice(deviceId);
        await waitUntil(async () => {
            const res = await this.client.http.authedRequest("POST", "/keys/query", undefined, {
                device_keys: { [this.userId]: [deviceId] },
            });
            return Boolean(res?.device_keys?.[this.userId]?.[deviceId]?.signatures?.[this.userId]?.[`ed25519:${ssk}`]);
        }, { timeoutMs, intervalMs: 200, what: `the homeserver to serve ${this.userId}'s signature on ${deviceId}` });
    }

    /** Wait until the homeserver lists this device's keys (so other users' key queries find it). */
    async waitKeysUploaded(timeoutMs) {
        await waitUntil(async () => {
            const res = await this.client.http.authedRequest("POST", "/keys/query", undefined, {
                device_keys: { [this.userId]: [this.deviceId] },
            });
            return Boolean(res?.device_keys?.[this.userId]?.[this.deviceId]);
        }, { timeoutMs, intervalMs: 200, what: `${this.userId} ${this.deviceId}'s keys on the homeserver` });
    }

    // ---- timeline -----------------------------------------------------------

    /**
     * The room's messages as this user sees them. Waits until `min_count` are
     * readable (decrypted, or sent in the clear); on timeout returns what there
     * is with `timed_out: true`, since "could not decrypt" is often the result
     * a test wants to assert.
     */
    async messages(params) {
        const roomId = required(params, "room_id");
        const minCount = params.min_count ?? 0;
        const timeoutMs = timeoutOf(params);
        const deadline = Date.now() + timeoutMs;

        let room;
        try {
            room = await waitUntil(() => this.room(roomId), { timeoutMs, what: `${this.userId} to know room ${roomId}` });
        } catch (err) {
            return { messages: [], timed_out: true, error: err.message };
        }

        for (;;) {
            await this.paginateToStart(room);
            const events = room.getLiveTimeline().getEvents().filter(isMessageEvent);
            await this.retryFailedDecryptions(events);
            const messages = await Promise.all(events.map((ev) => this.describeMessage(ev)));
            const readable = messages.filter((m) => m.body !== undefined && !m.error).length;
            if (readable >= minCount) return { messages };
            if (Date.now() >= deadline) return { messages, timed_out: true };
            await sleep(100);
        }
    }

    /**
     * Walk the live timeline back to the oldest event the server lets us see.
     * Bounded so a misbehaving server cannot spin us forever.
     */
    async paginateToStart(room) {
        for (let i = 0; i < 200; i++) {
            const more = await this.client.paginateEventTimeline(room.getLiveTimeline(), { backwards: true, limit: 100 });
            if (!more) return;
        }
    }

    /**
     * The SDK retries decryption by itself when the crypto layer reports new
     * keys; nudging failed events again is a cheap belt-and-braces for keys that
     * arrive through a bundle import. Wait for in-flight attempts so the result
     * reflects them.
     */
    async retryFailedDecryptions(events) {
        const backend = this.client.getCrypto();
        const pending = [];
        for (const ev of events) {
            if (ev.isBeingDecrypted()) {
                pending.push(ev.getDecryptionPromise());
            } else if (ev.isEncrypted() && ev.isDecryptionFailure()) {
                pending.push(ev.attemptDecryption(backend, { isRetry: true }));
            } else if (ev.shouldAttemptDecryption()) {
                pending.push(this.client.decryptEventIfNeeded(ev));
            }
        }
        await Promise.allSettled(pending);
    }

    async describeMessage(ev) {
        const encrypted = ev.isEncrypted();
        const decrypted = encrypted && !ev.isDecryptionFailure() && ev.getType() === "m.room.message";
        const out = {
            event_id: ev.getId(),
            sender: ev.getSender(),
            type: ev.getType(),
            encrypted,
            decrypted,
        };
        if (!encrypted || decrypted) {
            const content = ev.getContent();
            out.body = content.body;
            if (content.msgtype) out.msgtype = content.msgtype;
            if (content.url) out.url = content.url;
            if (content.file?.url) out.file_url = content.file.url;
        }
        if (encrypted) {
            const sessionId = ev.getWireContent().session_id;
            if (sessionId) out.session_id = sessionId;
        }
        if (ev.isDecryptionFailure()) {
            out.error = `${ev.decryptionFailureReason}: ${ev.getContent().body ?? ""}`.trim();
        } else if (encrypted && !decrypted) {
            out.error = "not decrypted yet";
        }
        if (decrypted) {
            // Set by the Rust crypto layer when the Megolm session came from
            // someone else's MSC4268 key bundle (the "shared by" line in Element).
            const forwarder = ev.getKeyForwardingUser();
            if (forwarder) out.forwarder = forwarder;
            const info = await this.crypto.getEncryptionInfoForEvent(ev);
            if (info) {
                out.shield_colour = EventShieldColour[info.shieldColour];
                if (info.shieldReason !== null) out.shield_reason = EventShieldReason[info.shieldReason];
            }
        }
        return out;
    }

    /**
     * Wait until the room's live timeline has a readable message matching the filter (sender,
     * body exactly, or body_contains; after_event_id: only messages after that event), and
     * return it as `messages` describes it. No back-pagination: for messages that arrive while
     * waiting, or recently.
     */
    async waitForMessage(params) {
        const roomId = required(params, "room_id");
        const timeoutMs = timeoutOf(params);
        const room = await waitUntil(() => this.room(roomId), { timeoutMs, what: `${this.userId} to know room ${roomId}` });
        const want = (ev) => {
            if (params.sender && ev.getSender() !== params.sender) return false;
            if (ev.isEncrypted() && ev.isDecryptionFailure()) return false;
            const body = ev.getContent().body;
            if (typeof body !== "string") return false;
            if (params.body !== undefined && body !== params.body) return false;
            if (params.body_contains !== undefined && !body.includes(params.body_contains)) return false;
            if (params.msgtype !== undefined && ev.getContent().msgtype !== params.msgtype) return false;
            return true;
        };
        const what = `${this.userId} to see a message matching ${JSON.stringify(params)} in ${roomId}`;
        const ev = await waitUntil(() => {
            let events = room.getLiveTimeline().getEvents().filter(isMessageEvent);
            if (params.after_event_id) {
                const i = events.findIndex((e) => e.getId() === params.after_event_id);
                if (i < 0) return undefined;
                events = events.slice(i + 1);
            }
            return events.find(want);
        }, { timeoutMs, what });
        return this.describeMessage(ev);
    }

    /** Download media (mxc://) through the homeserver's authenticated media API, as this user. */
    async downloadMedia(params) {
        const mxc = required(params, "mxc");
        const match = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(mxc);
        if (!match) throw new Error(`not an mxc URI: ${mxc}`);
        const url = new URL(`/_matrix/client/v1/media/download/${encodeURIComponent(match[1])}/${encodeURIComponent(match[2])}`, this.homeserver);
        const res = await fetch(url, { headers: { Authorization: `Bearer ${this.client.getAccessToken()}` } });
        const data = Buffer.from(await res.arrayBuffer());
        if (!res.ok) throw new Error(`GET ${url.pathname}: HTTP ${res.status} ${data.toString("utf8")}`);
        return {
            size: data.length,
            sha256: createHash("sha256").update(data).digest("hex"),
            content_type: res.headers.get("content-type"),
        };
    }

    /**
     * Download and decrypt the encrypted attachment (content.file) of a message in the room's
     * live timeline, as Element does: the ciphertext through the authenticated media API, then
     * the Rust crypto's attachment decryption, which checks the file's SHA-256.
     */
    async downloadAttachment(params) {
        const roomId = required(params, "room_id");
        const eventId = required(params, "event_id");
        const room = this.room(roomId);
        const ev = room?.getLiveTimeline().getEvents().find((e) => e.getId() === eventId);
        if (!ev) throw new Error(`${this.userId} has no event ${eventId} in ${roomId}`);
        const file = ev.getContent().file;
        if (!file?.url) throw new Error(`event ${eventId} has no encrypted attachment: ${JSON.stringify(ev.getContent())}`);
        const match = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(file.url);
        if (!match) throw new Error(`not an mxc URI: ${file.url}`);
        const url = new URL(`/_matrix/client/v1/media/download/${encodeURIComponent(match[1])}/${encodeURIComponent(match[2])}`, this.homeserver);
        const res = await fetch(url, { headers: { Authorization: `Bearer ${this.client.getAccessToken()}` } });
        const data = new Uint8Array(await res.arrayBuffer());
        if (!res.ok) throw new Error(`GET ${url.pathname}: HTTP ${res.status}`);
        const info = { ...file };
        delete info.url;
        const plain = RustSdkCryptoJs.Attachment.decrypt(new RustSdkCryptoJs.EncryptedAttachment(data, JSON.stringify(info)));
        return {
            ciphertext_size: data.length,
            size: plain.length,
            sha256: createHash("sha256").update(plain).digest("hex"),
        };
    }

    // ---- keys and trust -----------------------------------------------------

    /**
     * Ask the homeserver for the target's keys now rather than waiting for the
     * next device-list change. The crypto API only downloads keys for users it
     * does not track yet (and then does not store them), so this uses the Rust
     * machine that RustCrypto wraps (TypeScript "private" fields are plain JS
     * properties). An out-of-band query stores its answer even for untracked
     * users; marking the user tracked as well would make every device lookup
     * stall ~1 s on the "pending /keys/query" the sync loop then owes.
     */
    async refreshKeys(userId) {
        const backend = this.client.getCrypto();
        const olmMachine = backend.olmMachine;
        const processor = backend.outgoingRequestProcessor;
        if (!olmMachine || !processor) {
            await backend.getUserDeviceInfo([userId], true);
            return;
        }
        const rustUser = new RustSdkCryptoJs.UserId(userId);
        await processor.makeOutgoingRequest(olmMachine.queryKeysForUsers([rustUser]));
    }

    async deviceStatus(params) {
        const targetUser = required(params, "target_user");
        const targetDevice = required(params, "target_device");
        const timeoutMs = timeoutOf(params);

        const read = async () => {
            await this.refreshKeys(targetUser);
            const status = await this.crypto.getDeviceVerificationStatus(targetUser, targetDevice);
            return status;
        };

        let status;
        if (params.wait_signed) {
            // A device counts as cross-signed only after a key query that sees
            // the signature, so poll.
            status = await waitUntil(async () => {
                const s = await read();
                return s?.signedByOwner ? s : undefined;
            }, { timeoutMs, intervalMs: 250, what: `${this.userId} to see ${targetUser} ${targetDevice} signed by its owner` });
        } else {
            status = await read();
        }

        const keys = await this.crypto.getUserCrossSigningKeys(targetUser);
        const userStatus = await this.crypto.getUserVerificationStatus(targetUser);
        return {
            device: status
                ? {
                      signedByOwner: status.signedByOwner,
                      crossSigningVerified: status.crossSigningVerified,
                      locallyVerified: status.localVerified,
                      tofu: status.tofu,
                      isVerified: status.isVerified(),
                  }
                : null,
            cross_signing_master_key: firstKey(keys?.master_key) ?? null,
            cross_signing_self_signing_key: firstKey(keys?.self_signing_key) ?? null,
            user: {
                isCrossSigningVerified: userStatus.isCrossSigningVerified(),
                wasCrossSigningVerified: userStatus.wasCrossSigningVerified(),
                needsUserApproval: userStatus.needsUserApproval,
            },
        };
    }

    async exportKeys(params) {
        const roomId = params.room_id;
        const all = JSON.parse(await this.crypto.exportRoomKeysAsJson());
        const sessions = all
            .filter((k) => !roomId || k.room_id === roomId)
            .map((k) => {
                const rawFlags = {};
                for (const key of SHARED_HISTORY_KEYS) if (key in k) rawFlags[key] = k[key];
                const firstPresent = SHARED_HISTORY_KEYS.find((key) => key in k);
                return {
                    room_id: k.room_id,
                    session_id: k.session_id,
                    sender_key: k.sender_key,
                    // The key itself (export format): the secrets test looks for it in heirloom's log.
                    session_key: k.session_key,
                    shared_history: firstPresent === undefined ? null : k[firstPresent],
                    raw_flags: rawFlags,
                };
            });
        return { sessions };
    }

    async stop() {
        this.client.stopClient();
    }
}

function isMessageEvent(ev) {
    if (ev.getWireType() === "m.room.message") return true;
    if (!ev.isEncrypted()) return false;
    // Encrypted: keep it unless it decrypted to something other than a message
    // (a failure shows as an m.room.message placeholder).
    const clearType = ev.getType();
    return clearType === "m.room.encrypted" || clearType === "m.room.message";
}

function firstKey(crossSigningKey) {
    if (!crossSigningKey?.keys) return undefined;
    return Object.values(crossSigningKey.keys)[0];
}

function withTimeout(promise, timeoutMs, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
