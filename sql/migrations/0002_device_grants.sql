-- Device authorization grants (RFC 8628) and the per-IP sign-in rate counters.
-- Both live in PostgreSQL so that any replica can answer any step of a sign-in.

CREATE TABLE device_grants (
    device_code_hash bytea PRIMARY KEY,          -- SHA-256 of the device code; the code itself is never stored
    user_code        text        NOT NULL,       -- normalized, without the dash
    status           text        NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    surface          text,
    client_ip        text,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    last_poll_at     timestamptz,
    decided_at       timestamptz,
    sub              text,
    email            text,
    name             text,
    groups           jsonb,
    idp_refresh_token bytea                      -- sealed with a key derived from session.jwt_secret
);

-- A user code is unique among live grants only; spent ones may repeat later.
CREATE UNIQUE INDEX device_grants_live_user_code ON device_grants (user_code) WHERE status IN ('pending', 'approved');
CREATE INDEX device_grants_expires_at ON device_grants (expires_at);

CREATE TABLE rate_counters (
    key          text        NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer     NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_counters_window ON rate_counters (window_start);
