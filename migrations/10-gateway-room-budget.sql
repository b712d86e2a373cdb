-- v9 -> v10: The bridge's refusals: what an event was as it arrived, and each room's share of the outbox
-- original is the event as the homeserver sent it when body is heirloom's decrypted copy ('' when
-- body is as it arrived): if the bridge refuses the decrypted copy every time, it gets the event
-- as it arrived before the event is set aside (fell_back: body and original swapped; an
-- operator's resend swaps them back). size counts both.
ALTER TABLE gateway_event ADD COLUMN original TEXT NOT NULL DEFAULT '';
ALTER TABLE gateway_event ADD COLUMN fell_back BOOLEAN NOT NULL DEFAULT false;
-- A room's bytes in the outbox (its share of gateway.max_outbox_size).
CREATE INDEX gateway_event_room_idx ON gateway_event (room_id, delivered_at, dead_at, size);
