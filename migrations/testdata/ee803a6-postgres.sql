-- A database created by heirloom at ee803a6 (mautrix-go v0.32.0: crypto store schema 22, state store 11;
-- heirloom's schema 7), dumped with pg_dump --no-owner --no-privileges --inserts (settings and psql
-- commands left out): what an upgrade starts from.

CREATE TYPE public.membership AS ENUM (
    'join',
    'leave',
    'invite',
    'ban',
    'knock'
);

CREATE TABLE public.admin_refusal (
    user_id text NOT NULL,
    refused_at bigint NOT NULL
);

CREATE TABLE public.bundle_delivery (
    bundle_id text NOT NULL,
    user_id text NOT NULL,
    device_id text NOT NULL,
    delivered boolean NOT NULL,
    reason text DEFAULT ''::text NOT NULL,
    added_later boolean DEFAULT false NOT NULL
);

CREATE TABLE public.bundle_received (
    puppet text NOT NULL,
    room_id text NOT NULL,
    sender text NOT NULL,
    sender_device text NOT NULL,
    sender_key text NOT NULL,
    file_info text NOT NULL,
    state text NOT NULL,
    imported integer DEFAULT 0 NOT NULL,
    withheld integer DEFAULT 0 NOT NULL,
    skipped integer DEFAULT 0 NOT NULL,
    error text DEFAULT ''::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt bigint DEFAULT 0 NOT NULL,
    received_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    import_join text DEFAULT ''::text NOT NULL,
    version bigint DEFAULT 1 NOT NULL
);

CREATE TABLE public.bundle_sent (
    bundle_id text NOT NULL,
    puppet text NOT NULL,
    room_id text NOT NULL,
    invitee text NOT NULL,
    invite_event_id text,
    state text NOT NULL,
    sessions integer DEFAULT 0 NOT NULL,
    withheld integer DEFAULT 0 NOT NULL,
    size bigint DEFAULT 0 NOT NULL,
    mxc text DEFAULT ''::text NOT NULL,
    file_info text DEFAULT ''::text NOT NULL,
    reason text DEFAULT ''::text NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    invitee_master_key text DEFAULT ''::text NOT NULL,
    kind text DEFAULT 'invite'::text NOT NULL
);

CREATE TABLE public.crypto_account (
    account_id text NOT NULL,
    device_id text NOT NULL,
    shared boolean NOT NULL,
    sync_token text NOT NULL,
    account bytea NOT NULL,
    key_backup_version text DEFAULT ''::text NOT NULL
);

CREATE TABLE public.crypto_cross_signing_keys (
    user_id text NOT NULL,
    usage text NOT NULL,
    key character(43) NOT NULL,
    first_seen_key character(43) NOT NULL
);

CREATE TABLE public.crypto_cross_signing_signatures (
    signed_user_id text NOT NULL,
    signed_key text NOT NULL,
    signer_user_id text NOT NULL,
    signer_key text NOT NULL,
    signature character(88) NOT NULL
);

CREATE TABLE public.crypto_device (
    user_id text NOT NULL,
    device_id text NOT NULL,
    identity_key character(43) NOT NULL,
    signing_key character(43) NOT NULL,
    trust smallint NOT NULL,
    deleted boolean NOT NULL,
    name text NOT NULL
);

CREATE TABLE public.crypto_megolm_inbound_session (
    account_id text NOT NULL,
    session_id character(43) NOT NULL,
    sender_key character(43) NOT NULL,
    signing_key character(43),
    room_id text NOT NULL,
    session bytea,
    forwarding_chains bytea,
    shared_history boolean,
    withheld_code text,
    withheld_reason text,
    ratchet_safety jsonb,
    received_at timestamp without time zone,
    max_age bigint,
    max_messages integer,
    is_scheduled boolean DEFAULT false NOT NULL,
    key_backup_version text DEFAULT ''::text NOT NULL,
    key_source text DEFAULT ''::text NOT NULL,
    source_user text DEFAULT ''::text NOT NULL
);

CREATE TABLE public.crypto_megolm_outbound_session (
    account_id text NOT NULL,
    room_id text NOT NULL,
    session_id character(43) NOT NULL,
    session bytea NOT NULL,
    shared boolean NOT NULL,
    max_messages integer NOT NULL,
    message_count integer NOT NULL,
    max_age bigint NOT NULL,
    shared_history boolean,
    created_at timestamp without time zone NOT NULL,
    last_used timestamp without time zone NOT NULL
);

CREATE TABLE public.crypto_megolm_outbound_session_shared (
    user_id text NOT NULL,
    identity_key character(43) NOT NULL,
    session_id character(43) NOT NULL
);

CREATE TABLE public.crypto_message_index (
    session_id character(43) NOT NULL,
    index integer NOT NULL,
    event_id text NOT NULL,
    "timestamp" bigint NOT NULL
);

CREATE TABLE public.crypto_olm_message_hash (
    account_id text NOT NULL,
    received_at bigint NOT NULL,
    message_hash bytea NOT NULL
);

CREATE TABLE public.crypto_olm_session (
    account_id text NOT NULL,
    session_id character(43) NOT NULL,
    sender_key character(43) NOT NULL,
    session bytea NOT NULL,
    created_at timestamp without time zone NOT NULL,
    last_decrypted timestamp without time zone NOT NULL,
    last_encrypted timestamp without time zone NOT NULL
);

CREATE TABLE public.crypto_secrets (
    account_id text NOT NULL,
    name text NOT NULL,
    secret bytea NOT NULL
);

CREATE TABLE public.crypto_tracked_user (
    user_id text NOT NULL,
    devices_outdated boolean DEFAULT false NOT NULL,
    last_attempt bigint,
    error_count integer
);

CREATE TABLE public.crypto_version (
    version integer,
    compat integer
);

CREATE TABLE public.gateway_counter (
    name text NOT NULL,
    value bigint NOT NULL
);

CREATE TABLE public.gateway_event (
    seq bigint NOT NULL,
    event_key text NOT NULL,
    event_id text DEFAULT ''::text NOT NULL,
    room_id text DEFAULT ''::text NOT NULL,
    kind text NOT NULL,
    body text NOT NULL,
    waiting boolean DEFAULT false NOT NULL,
    session_id text DEFAULT ''::text NOT NULL,
    wait_until bigint DEFAULT 0 NOT NULL,
    txn_id bigint DEFAULT 0 NOT NULL,
    received_at bigint NOT NULL,
    delivered_at bigint DEFAULT 0 NOT NULL
);

CREATE TABLE public.gateway_late (
    event_id text NOT NULL,
    room_id text NOT NULL,
    session_id text NOT NULL,
    body text NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE public.gateway_media (
    media_id text NOT NULL,
    file_info text NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE public.gateway_send (
    user_id text NOT NULL,
    txn_id text NOT NULL,
    event_id text NOT NULL,
    sent_at bigint NOT NULL
);

CREATE TABLE public.gateway_txn (
    txn_id bigint NOT NULL,
    created_at bigint NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt bigint DEFAULT 0 NOT NULL,
    last_error text DEFAULT ''::text NOT NULL
);

CREATE TABLE public.heirloom_txn (
    txn_id text NOT NULL,
    body_hash text DEFAULT ''::text NOT NULL,
    received_at bigint NOT NULL
);

CREATE TABLE public.heirloom_version (
    version integer,
    compat integer
);

CREATE TABLE public.mx_registrations (
    user_id text NOT NULL
);

CREATE TABLE public.mx_room_state (
    room_id text NOT NULL,
    power_levels jsonb,
    encryption jsonb,
    create_event jsonb,
    join_rules jsonb,
    history_visibility jsonb,
    members_fetched boolean DEFAULT false NOT NULL
);

CREATE TABLE public.mx_user_profile (
    room_id text NOT NULL,
    user_id text NOT NULL,
    membership public.membership NOT NULL,
    displayname text DEFAULT ''::text NOT NULL,
    avatar_url text DEFAULT ''::text NOT NULL,
    name_skeleton bytea
);

CREATE TABLE public.mx_version (
    version integer,
    compat integer
);

CREATE TABLE public.puppet (
    user_id text NOT NULL,
    device_id text NOT NULL,
    displayname text DEFAULT ''::text NOT NULL,
    cross_signing_seeds text DEFAULT ''::text NOT NULL,
    master_key text DEFAULT ''::text NOT NULL,
    ready boolean DEFAULT false NOT NULL,
    created_at bigint NOT NULL,
    last_active_at bigint DEFAULT 0 NOT NULL
);

CREATE TABLE public.puppet_invite (
    puppet text NOT NULL,
    room_id text NOT NULL,
    inviter text NOT NULL,
    invite_event_id text DEFAULT ''::text NOT NULL,
    invited_at bigint NOT NULL,
    accepted_at bigint DEFAULT 0 NOT NULL,
    join_event_id text DEFAULT ''::text NOT NULL
);

CREATE TABLE public.room_rotation (
    room_id text NOT NULL,
    rotate_after bigint NOT NULL
);

INSERT INTO public.crypto_version VALUES (22, 20);

INSERT INTO public.heirloom_version VALUES (7, 7);

INSERT INTO public.mx_version VALUES (11, 3);

ALTER TABLE ONLY public.admin_refusal
    ADD CONSTRAINT admin_refusal_pkey PRIMARY KEY (user_id);

ALTER TABLE ONLY public.bundle_delivery
    ADD CONSTRAINT bundle_delivery_pkey PRIMARY KEY (bundle_id, user_id, device_id);

ALTER TABLE ONLY public.bundle_received
    ADD CONSTRAINT bundle_received_pkey PRIMARY KEY (puppet, room_id, sender);

ALTER TABLE ONLY public.bundle_sent
    ADD CONSTRAINT bundle_sent_pkey PRIMARY KEY (bundle_id);

ALTER TABLE ONLY public.crypto_account
    ADD CONSTRAINT crypto_account_pkey PRIMARY KEY (account_id);

ALTER TABLE ONLY public.crypto_cross_signing_keys
    ADD CONSTRAINT crypto_cross_signing_keys_pkey PRIMARY KEY (user_id, usage);

ALTER TABLE ONLY public.crypto_cross_signing_signatures
    ADD CONSTRAINT crypto_cross_signing_signatures_pkey PRIMARY KEY (signed_user_id, signed_key, signer_user_id, signer_key);

ALTER TABLE ONLY public.crypto_device
    ADD CONSTRAINT crypto_device_pkey PRIMARY KEY (user_id, device_id);

ALTER TABLE ONLY public.crypto_megolm_inbound_session
    ADD CONSTRAINT crypto_megolm_inbound_session_pkey PRIMARY KEY (account_id, session_id);

ALTER TABLE ONLY public.crypto_megolm_outbound_session
    ADD CONSTRAINT crypto_megolm_outbound_session_pkey PRIMARY KEY (account_id, room_id);

ALTER TABLE ONLY public.crypto_megolm_outbound_session
    ADD CONSTRAINT crypto_megolm_outbound_session_session_id_key UNIQUE (session_id);

ALTER TABLE ONLY public.crypto_megolm_outbound_session_shared
    ADD CONSTRAINT crypto_megolm_outbound_session_shared_pkey PRIMARY KEY (user_id, identity_key, session_id);

ALTER TABLE ONLY public.crypto_message_index
    ADD CONSTRAINT crypto_message_index_pkey PRIMARY KEY (session_id, index);

ALTER TABLE ONLY public.crypto_olm_message_hash
    ADD CONSTRAINT crypto_olm_message_hash_pkey PRIMARY KEY (message_hash);

ALTER TABLE ONLY public.crypto_olm_session
    ADD CONSTRAINT crypto_olm_session_pkey PRIMARY KEY (account_id, session_id);

ALTER TABLE ONLY public.crypto_secrets
    ADD CONSTRAINT crypto_secrets_pkey PRIMARY KEY (account_id, name);

ALTER TABLE ONLY public.crypto_tracked_user
    ADD CONSTRAINT crypto_tracked_user_pkey PRIMARY KEY (user_id);

ALTER TABLE ONLY public.gateway_counter
    ADD CONSTRAINT gateway_counter_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.gateway_event
    ADD CONSTRAINT gateway_event_event_key_key UNIQUE (event_key);

ALTER TABLE ONLY public.gateway_event
    ADD CONSTRAINT gateway_event_pkey PRIMARY KEY (seq);

ALTER TABLE ONLY public.gateway_late
    ADD CONSTRAINT gateway_late_pkey PRIMARY KEY (event_id);

ALTER TABLE ONLY public.gateway_media
    ADD CONSTRAINT gateway_media_pkey PRIMARY KEY (media_id);

ALTER TABLE ONLY public.gateway_send
    ADD CONSTRAINT gateway_send_pkey PRIMARY KEY (user_id, txn_id);

ALTER TABLE ONLY public.gateway_txn
    ADD CONSTRAINT gateway_txn_pkey PRIMARY KEY (txn_id);

ALTER TABLE ONLY public.heirloom_txn
    ADD CONSTRAINT heirloom_txn_pkey PRIMARY KEY (txn_id);

ALTER TABLE ONLY public.mx_registrations
    ADD CONSTRAINT mx_registrations_pkey PRIMARY KEY (user_id);

ALTER TABLE ONLY public.mx_room_state
    ADD CONSTRAINT mx_room_state_pkey PRIMARY KEY (room_id);

ALTER TABLE ONLY public.mx_user_profile
    ADD CONSTRAINT mx_user_profile_pkey PRIMARY KEY (room_id, user_id);

ALTER TABLE ONLY public.puppet_invite
    ADD CONSTRAINT puppet_invite_pkey PRIMARY KEY (puppet, room_id);

ALTER TABLE ONLY public.puppet
    ADD CONSTRAINT puppet_pkey PRIMARY KEY (user_id);

ALTER TABLE ONLY public.room_rotation
    ADD CONSTRAINT room_rotation_pkey PRIMARY KEY (room_id);

CREATE INDEX bundle_received_room_idx ON public.bundle_received USING btree (room_id);

CREATE UNIQUE INDEX bundle_sent_invite_idx ON public.bundle_sent USING btree (puppet, room_id, invite_event_id);

CREATE INDEX bundle_sent_invitee_idx ON public.bundle_sent USING btree (invitee, state);

CREATE INDEX bundle_sent_room_idx ON public.bundle_sent USING btree (room_id);

CREATE INDEX bundle_sent_state_idx ON public.bundle_sent USING btree (state);

CREATE INDEX crypto_megolm_inbound_session_backup_idx ON public.crypto_megolm_inbound_session USING btree (account_id, key_backup_version) WHERE (session IS NOT NULL);

CREATE INDEX crypto_olm_message_hash_account_idx ON public.crypto_olm_message_hash USING btree (account_id);

CREATE INDEX crypto_olm_session_sender_key_idx ON public.crypto_olm_session USING btree (account_id, sender_key);

CREATE INDEX gateway_event_session_idx ON public.gateway_event USING btree (session_id);

CREATE INDEX gateway_event_txn_idx ON public.gateway_event USING btree (txn_id, seq);

CREATE INDEX gateway_late_session_idx ON public.gateway_late USING btree (session_id);

CREATE INDEX heirloom_megolm_inbound_room_idx ON public.crypto_megolm_inbound_session USING btree (account_id, room_id);

CREATE INDEX mx_user_profile_membership_idx ON public.mx_user_profile USING btree (room_id, membership);

CREATE INDEX mx_user_profile_name_skeleton_idx ON public.mx_user_profile USING btree (room_id, name_skeleton);

ALTER TABLE ONLY public.bundle_delivery
    ADD CONSTRAINT bundle_delivery_bundle_id_fkey FOREIGN KEY (bundle_id) REFERENCES public.bundle_sent(bundle_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.crypto_olm_message_hash
    ADD CONSTRAINT crypto_olm_message_hash_account_fkey FOREIGN KEY (account_id) REFERENCES public.crypto_account(account_id) ON UPDATE CASCADE ON DELETE CASCADE;

