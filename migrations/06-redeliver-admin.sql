-- v5 -> v6: Redelivery to the invitee's new devices, reshared bundles, puppet activity, the bot's refusals
-- The invitee's master key a bundle's devices were chosen under: a device added later gets the
-- bundle only while the invitee's identity is still this one. '' (bundles from before v6): never.
ALTER TABLE bundle_sent ADD COLUMN invitee_master_key TEXT NOT NULL DEFAULT '';
-- invite: built for a puppet's invite; reshare: built on an admin's request for a member.
ALTER TABLE bundle_sent ADD COLUMN kind TEXT NOT NULL DEFAULT 'invite';
CREATE INDEX bundle_sent_invitee_idx ON bundle_sent (invitee, state);
CREATE INDEX bundle_sent_room_idx ON bundle_sent (room_id);
-- A device the invitee added after the bundle was first delivered.
ALTER TABLE bundle_delivery ADD COLUMN added_later BOOLEAN NOT NULL DEFAULT false;
-- When heirloom last acted as or for the puppet (unix ms, 0: not since v6).
ALTER TABLE puppet ADD COLUMN last_active_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX bundle_received_room_idx ON bundle_received (room_id);
-- Users who are not admins and got the bot's one refusal: the bot ignores them from then on.
CREATE TABLE admin_refusal (
    user_id    TEXT   PRIMARY KEY,
    refused_at BIGINT NOT NULL
);
