// Package tesths holds what the packages' fake homeservers share: the key server (device keys,
// one-time keys, cross-signing keys and signatures as puppets and test clients upload them, and the
// /keys/query and /keys/claim answers made of them, with a device's fallback key once its one-time
// keys have run out). The homeservers serve it under their own lock.
package tesths

import (
	"encoding/json"
	"net/http"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Keys is a homeserver's key store.
type Keys struct {
	// Parts holds each user's part of a /keys/query answer; OTKs the one-time keys /keys/claim
	// hands out, and Fallback each device's fallback key, handed out when it has none left.
	Parts    map[id.UserID]*mautrix.RespQueryKeys
	OTKs     map[id.UserID]map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey
	Fallback map[id.UserID]map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey
}

// NewKeys returns an empty key store.
func NewKeys() Keys {
	return Keys{Parts: map[id.UserID]*mautrix.RespQueryKeys{}, OTKs: map[id.UserID]map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey{},
		Fallback: map[id.UserID]map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey{}}
}

// Part returns the user's part of /keys/query answers, to change.
func (k Keys) Part(user id.UserID) *mautrix.RespQueryKeys {
	part, ok := k.Parts[user]
	if !ok {
		part = &mautrix.RespQueryKeys{DeviceKeys: map[id.UserID]map[id.DeviceID]mautrix.DeviceKeys{user: {}},
			MasterKeys: map[id.UserID]mautrix.CrossSigningKeys{}, SelfSigningKeys: map[id.UserID]mautrix.CrossSigningKeys{}}
		k.Parts[user] = part
	}
	return part
}

// Upload keeps a device's keys and one-time keys (POST /keys/upload); it returns the answer, how
// many one-time keys the device now has, and how many the request carried.
func (k Keys) Upload(r *http.Request, user id.UserID, device id.DeviceID) (answer map[string]any, uploaded int) {
	var req struct {
		mautrix.ReqUploadKeys
		FallbackKeys map[id.KeyID]mautrix.OneTimeKey `json:"fallback_keys"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	if len(req.FallbackKeys) > 0 {
		if k.Fallback[user] == nil {
			k.Fallback[user] = map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey{}
		}
		k.Fallback[user][device] = req.FallbackKeys // a new one replaces the old, as Synapse does
	}
	if req.DeviceKeys != nil {
		k.Part(user).DeviceKeys[user][device] = *req.DeviceKeys
	}
	if k.OTKs[user] == nil {
		k.OTKs[user] = map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey{}
	}
	if k.OTKs[user][device] == nil {
		k.OTKs[user][device] = map[id.KeyID]mautrix.OneTimeKey{}
	}
	for keyID, key := range req.OneTimeKeys {
		k.OTKs[user][device][keyID] = key
	}
	return map[string]any{"one_time_key_counts": map[string]int{"signed_curve25519": len(k.OTKs[user][device])}}, len(req.OneTimeKeys)
}

// UploadCrossSigning keeps the user's master and self-signing keys (POST /keys/device_signing/upload).
func (k Keys) UploadCrossSigning(r *http.Request, user id.UserID) {
	var req mautrix.UploadCrossSigningKeysReq[any]
	_ = json.NewDecoder(r.Body).Decode(&req)
	part := k.Part(user)
	part.MasterKeys[user], part.SelfSigningKeys[user] = req.Master, req.SelfSigning
}

// UploadSignatures adds signatures of devices to their keys (POST /keys/signatures/upload).
func (k Keys) UploadSignatures(r *http.Request) {
	var req mautrix.ReqUploadSignatures
	_ = json.NewDecoder(r.Body).Decode(&req)
	for user, objects := range req {
		devices := k.Part(user).DeviceKeys[user]
		for keyID, signed := range objects {
			keys, ok := devices[id.DeviceID(keyID)]
			if !ok {
				continue // a signature of a cross-signing key: not served
			}
			for signer, sigs := range signed.Signatures {
				for sigKey, sig := range sigs {
					if keys.Signatures[signer] == nil {
						keys.Signatures[signer] = map[id.KeyID]string{}
					}
					keys.Signatures[signer][sigKey] = sig
				}
			}
			devices[id.DeviceID(keyID)] = keys
		}
	}
}

// Query answers POST /keys/query: each user's devices, and the user's identity if it has one.
func (k Keys) Query(r *http.Request) mautrix.RespQueryKeys {
	var req mautrix.ReqQueryKeys
	_ = json.NewDecoder(r.Body).Decode(&req)
	resp := mautrix.RespQueryKeys{DeviceKeys: map[id.UserID]map[id.DeviceID]mautrix.DeviceKeys{},
		MasterKeys: map[id.UserID]mautrix.CrossSigningKeys{}, SelfSigningKeys: map[id.UserID]mautrix.CrossSigningKeys{}}
	for user := range req.DeviceKeys {
		resp.DeviceKeys[user] = map[id.DeviceID]mautrix.DeviceKeys{}
		part, ok := k.Parts[user]
		if !ok {
			continue
		}
		for device, keys := range part.DeviceKeys[user] {
			resp.DeviceKeys[user][device] = keys
		}
		if master, ok := part.MasterKeys[user]; ok {
			resp.MasterKeys[user] = master
			resp.SelfSigningKeys[user] = part.SelfSigningKeys[user]
		}
	}
	return resp
}

// Claim hands out one one-time key per device asked for, while the device has one left, and then
// its fallback key, again and again (POST /keys/claim).
func (k Keys) Claim(r *http.Request) mautrix.RespClaimKeys {
	var req mautrix.ReqClaimKeys
	_ = json.NewDecoder(r.Body).Decode(&req)
	resp := mautrix.RespClaimKeys{OneTimeKeys: map[id.UserID]map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey{}}
	for user, devices := range req.OneTimeKeys {
		resp.OneTimeKeys[user] = map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey{}
		for device := range devices {
			for keyID, key := range k.OTKs[user][device] {
				resp.OneTimeKeys[user][device] = map[id.KeyID]mautrix.OneTimeKey{keyID: key}
				delete(k.OTKs[user][device], keyID)
				break
			}
			if _, claimed := resp.OneTimeKeys[user][device]; !claimed && len(k.Fallback[user][device]) > 0 {
				resp.OneTimeKeys[user][device] = k.Fallback[user][device]
			}
		}
	}
	return resp
}
