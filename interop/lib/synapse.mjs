// Account creation through Synapse's shared-secret registration admin API
// (what `register_new_matrix_user` does), plus a plain password login.

import { createHmac } from "node:crypto";

async function call(homeserver, method, path, body, accessToken) {
    const headers = { "Content-Type": "application/json" };
    if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
    const res = await fetch(new URL(path, homeserver), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try {
        json = text ? JSON.parse(text) : {};
    } catch {
        json = { raw: text };
    }
    if (!res.ok) {
        const err = new Error(`${method} ${path}: HTTP ${res.status} ${json.errcode ?? ""} ${json.error ?? text}`.trim());
        err.errcode = json.errcode;
        err.status = res.status;
        throw err;
    }
    return json;
}

/**
 * Register `username` as a non-admin user. Returns true if it was created and
 * false if it already existed, so a restarted peer can log an existing user
 * back in instead of failing.
 */
export async function registerWithSharedSecret(homeserver, sharedSecret, username, password) {
    const { nonce } = await call(homeserver, "GET", "/_synapse/admin/v1/register");
    const mac = createHmac("sha1", sharedSecret)
        .update([nonce, username, password, "notadmin"].join("\0"))
        .digest("hex");
    try {
        const res = await call(homeserver, "POST", "/_synapse/admin/v1/register", {
            nonce,
            username,
            password,
            admin: false,
            mac,
        });
        // The admin API logs the new user in as a side effect. That device never
        // gets E2EE keys; log it out so the user's device list holds only the
        // device the client creates below.
        await call(homeserver, "POST", "/_matrix/client/v3/logout", {}, res.access_token).catch(() => {});
        return true;
    } catch (err) {
        if (err.errcode === "M_USER_IN_USE") return false;
        throw err;
    }
}

export async function passwordLogin(homeserver, username, password) {
    return call(homeserver, "POST", "/_matrix/client/v3/login", {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password,
        initial_device_display_name: "heirloom interop peer",
    });
}
