-- Sign-in sessions ("families") and their rotating refresh tokens.
--
-- A family is everything that descends from one completed sign-in: its id is
-- the `sid` claim of every access token minted for it, so revoking the family
-- (revoked_at set, then NOTIFY gatehouse_revocations) ends all of them at once.
-- Refresh tokens are stored only as SHA-256 hashes. Rotated tokens stay until
-- the family is pruned, because a late second presentation of one is the sign
-- of a stolen token and revokes the whole family.
-- Every time below comes from the gateway's clock as a parameter, never now().

CREATE TABLE session_families (
    family_id          text        PRIMARY KEY,
    sub                text        NOT NULL,
    email              text,
    name               text,
    groups             text[]      NOT NULL DEFAULT '{}',
    client_ip          text,                        -- where the sign-in was completed
    created_at         timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,        -- created_at + maximum family lifetime
    last_refresh_at    timestamptz,
    last_access_exp    timestamptz NOT NULL,        -- exp of the newest access token minted for it
    refresh_count      integer     NOT NULL DEFAULT 0,
    idp_refresh_token  bytea,                       -- sealed; NULL when the IdP issued none
    revoked_at         timestamptz,
    revoke_reason      text
);

-- Administrators look people up by email, in any letter case.
CREATE INDEX session_families_email ON session_families (lower(email));
-- Each replica's revocation watcher loads the recent revocations at (re)connect.
CREATE INDEX session_families_revoked_at ON session_families (revoked_at) WHERE revoked_at IS NOT NULL;
-- Pruning finds families whose every token has ended.
CREATE INDEX session_families_expires_at ON session_families (expires_at);

CREATE TABLE session_refresh_tokens (
    token_hash        bytea       PRIMARY KEY,      -- SHA-256 of the refresh token
    family_id         text        NOT NULL REFERENCES session_families (family_id) ON DELETE CASCADE,
    issued_at         timestamptz NOT NULL,
    -- A refresh in progress holds the claim, so concurrent presentations on any
    -- replica make one IdP call; a claim older than the claim lifetime is
    -- considered abandoned (its holder crashed) and may be taken over.
    claim_id          text,
    claimed_at        timestamptz,
    rotated_at        timestamptz,                  -- set once, when the successor is issued
    successor         bytea                         -- sealed successor pair, kept only for the reuse window
);

CREATE INDEX session_refresh_tokens_family ON session_refresh_tokens (family_id);
