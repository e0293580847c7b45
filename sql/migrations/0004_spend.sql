-- Spend limits, their audit trail, last-seen identities, and the counters and
-- reservations that make caps hold when many requests run at once.
--
-- Money is integers only: spend_limits keeps the admin API's whole cents;
-- counters and reservations keep micro-dollars (1 cent = 10 000 µUSD), so the
-- per-request cost of a few tokens is not lost to rounding.
-- Every time comes from the gateway's clock as a parameter, never now(), so
-- tests can move the clock and replicas agree on period boundaries.

CREATE TABLE spend_limits (
    id                               text        PRIMARY KEY,                 -- 'spl_' + 32 hex
    scope_type                       text        NOT NULL CHECK (scope_type IN ('user', 'rbac_group', 'organization')),
    scope_id                         text        NOT NULL DEFAULT '',         -- sub / group name / '' for organization
    period                           text        NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly')),
    amount_cents                     bigint      CHECK (amount_cents IS NULL OR amount_cents >= 0),  -- NULL = unlimited
    currency                         text        NOT NULL DEFAULT 'USD' CHECK (currency = 'USD'),
    -- Gatehouse extension: a monthly group cap may also be a budget shared by all members.
    pooled_limit_enabled             boolean     NOT NULL DEFAULT false,
    pooled_monthly_credit_limit_cents bigint     CHECK (pooled_monthly_credit_limit_cents IS NULL OR pooled_monthly_credit_limit_cents >= 0),
    created_at                       timestamptz NOT NULL,
    updated_at                       timestamptz NOT NULL,
    created_by                       text        NOT NULL,
    UNIQUE (scope_type, scope_id, period),
    -- A pool is a monthly group budget, and an enabled pool needs an amount.
    CHECK (pooled_monthly_credit_limit_cents IS NULL OR (scope_type = 'rbac_group' AND period = 'monthly')),
    CHECK (NOT pooled_limit_enabled OR pooled_monthly_credit_limit_cents IS NOT NULL)
);

-- The admin API lists caps in creation order.
CREATE INDEX spend_limits_created ON spend_limits (created_at, id);

CREATE TABLE admin_audit (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text        NOT NULL,      -- 'admin-key:<id>', 'oidc:<sub>', or 'gatehouse' for the gateway itself
    action  text        NOT NULL,      -- e.g. 'spend_limit.upsert', 'spend_limit.delete', 'spend.reservation_expired'
    target  text        NOT NULL,
    before  jsonb,
    after   jsonb,
    reason  text
);

CREATE INDEX admin_audit_at ON admin_audit (at);

-- Last-seen identity per OIDC subject, so /effective can show names and emails
-- and resolve group caps against the groups a person last signed in with.
CREATE TABLE principals (
    sub        text        PRIMARY KEY,
    email      text,
    name       text,
    groups     jsonb       NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL
);

CREATE INDEX principals_updated_at ON principals (updated_at);

-- One row per charged scope and period. scope_type 'user' counts one person's
-- spend (user, group and organization caps are per-seat, so they all apply to
-- this row); 'group_pool' counts a group's shared monthly budget.
-- spent_micro is settled spend; reserved_micro is held by requests in flight.
-- exhausted_cap_micro is set when a running stream asked for more and the cap
-- (of that value) could not give it: admission stays closed while the cap is
-- at most that value, so raising the cap reopens it and the next period
-- starts with a fresh row.
CREATE TABLE spend_counters (
    scope_type          text        NOT NULL CHECK (scope_type IN ('user', 'group_pool')),
    scope_id            text        NOT NULL,
    period              text        NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly')),
    period_start        timestamptz NOT NULL,
    spent_micro         bigint      NOT NULL DEFAULT 0,
    reserved_micro      bigint      NOT NULL DEFAULT 0,
    exhausted_cap_micro bigint,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (scope_type, scope_id, period, period_start)
);

-- /effective with sort=spend_desc and retention pruning by period.
CREATE INDEX spend_counters_period ON spend_counters (period, period_start, spent_micro DESC);

-- One row per request that was charged. The counters it holds are kept as
-- parallel arrays (the same order the SQL functions lock them in), so settling
-- and expiry never need the caller to say again what was charged.
-- state: open (holds reserved_micro), settled (spent += settled_micro),
-- expired (the owner vanished; spent += reserved amount at expiry, which a late
-- settle replaces with the real cost).
CREATE TABLE spend_reservations (
    request_id     text        PRIMARY KEY,
    sub            text        NOT NULL,
    model          text,
    key_types      text[]      NOT NULL,
    key_ids        text[]      NOT NULL,
    key_periods    text[]      NOT NULL,
    key_starts     timestamptz[] NOT NULL,
    reserved_micro bigint      NOT NULL,
    state          text        NOT NULL CHECK (state IN ('open', 'settled', 'expired')),
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    settled_at     timestamptz,
    settled_micro  bigint,
    late_settle    boolean     NOT NULL DEFAULT false   -- settled by its owner after it had expired
);

CREATE INDEX spend_reservations_open_expiry ON spend_reservations (expires_at) WHERE state = 'open';
CREATE INDEX spend_reservations_settled_at ON spend_reservations (settled_at) WHERE state <> 'open';

-- Lock (creating on demand) the counter rows named by the parallel arrays, in
-- one fixed order. Every function below goes through here, so two requests
-- that share counters always take the locks in the same order and cannot
-- deadlock; creating missing rows first means the first requests of a new
-- period queue on the same row rather than each seeing "nothing spent yet".
CREATE FUNCTION spend_lock_counters(
    p_types text[], p_ids text[], p_periods text[], p_starts timestamptz[], p_now timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO spend_counters (scope_type, scope_id, period, period_start, updated_at)
    SELECT k.t, k.i, k.p, k.s, p_now
    FROM unnest(p_types, p_ids, p_periods, p_starts) AS k(t, i, p, s)
    ORDER BY k.t COLLATE "C", k.i COLLATE "C", k.p COLLATE "C", k.s
    ON CONFLICT DO NOTHING;
    PERFORM 1
    FROM spend_counters c
    JOIN unnest(p_types, p_ids, p_periods, p_starts) AS k(t, i, p, s)
      ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s
    ORDER BY c.scope_type COLLATE "C", c.scope_id COLLATE "C", c.period COLLATE "C", c.period_start
    FOR UPDATE OF c;
END;
$$;

-- Admit and reserve in one round trip. p_caps (µUSD, NULL = no cap) is
-- parallel to the key arrays. Admits iff for every capped counter
-- spent + reserved + amount <= cap and the counter is not marked exhausted at
-- that cap. Returns one row per counter, after the change, with the verdict.
-- Calling it again for the same request id reports the existing reservation
-- as admitted and changes nothing.
CREATE FUNCTION spend_reserve(
    p_request_id text, p_sub text, p_model text,
    p_types text[], p_ids text[], p_periods text[], p_starts timestamptz[], p_caps bigint[],
    p_amount bigint, p_now timestamptz, p_expires timestamptz
) RETURNS TABLE (
    admitted boolean, c_type text, c_id text, c_period text, c_start timestamptz,
    c_spent bigint, c_reserved bigint, c_exhausted bigint
) LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean;
BEGIN
    PERFORM 1 FROM spend_reservations r WHERE r.request_id = p_request_id;
    IF FOUND THEN
        v_ok := true;
    ELSE
        PERFORM spend_lock_counters(p_types, p_ids, p_periods, p_starts, p_now);
        SELECT coalesce(bool_and(
                   k.cap IS NULL
                   OR ((c.exhausted_cap_micro IS NULL OR k.cap > c.exhausted_cap_micro)
                       AND c.spent_micro + c.reserved_micro + p_amount <= k.cap)), true)
          INTO v_ok
          FROM spend_counters c
          JOIN unnest(p_types, p_ids, p_periods, p_starts, p_caps) AS k(t, i, p, s, cap)
            ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
        IF v_ok THEN
            UPDATE spend_counters c
               SET reserved_micro = c.reserved_micro + p_amount, updated_at = p_now
              FROM unnest(p_types, p_ids, p_periods, p_starts) AS k(t, i, p, s)
             WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
            INSERT INTO spend_reservations
                (request_id, sub, model, key_types, key_ids, key_periods, key_starts,
                 reserved_micro, state, created_at, expires_at)
            VALUES (p_request_id, p_sub, p_model, p_types, p_ids, p_periods, p_starts,
                    p_amount, 'open', p_now, p_expires);
        END IF;
    END IF;
    RETURN QUERY
        SELECT v_ok, c.scope_type, c.scope_id, c.period, c.period_start,
               c.spent_micro, c.reserved_micro, c.exhausted_cap_micro
          FROM spend_counters c
          JOIN unnest(p_types, p_ids, p_periods, p_starts) AS k(t, i, p, s)
            ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
END;
$$;

-- Grow an open reservation by p_amount while its stream runs. p_caps is
-- parallel to the reservation's stored keys. When a capped counter cannot
-- take the step, nothing is reserved and that counter is marked exhausted at
-- its cap. Returns 'granted', 'denied', or 'closed' (already settled or
-- expired: nothing to grow; the owner's settle corrects the spend). The
-- expiry moves to p_expires either way, because the owner is evidently alive.
CREATE FUNCTION spend_top_up(
    p_request_id text, p_caps bigint[], p_amount bigint, p_now timestamptz, p_expires timestamptz
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r spend_reservations%ROWTYPE;
    v_ok boolean;
BEGIN
    SELECT * INTO r FROM spend_reservations WHERE request_id = p_request_id FOR UPDATE;
    IF NOT FOUND OR r.state <> 'open' THEN
        RETURN 'closed';
    END IF;
    PERFORM spend_lock_counters(r.key_types, r.key_ids, r.key_periods, r.key_starts, p_now);
    SELECT coalesce(bool_and(k.cap IS NULL OR c.spent_micro + c.reserved_micro + p_amount <= k.cap), true)
      INTO v_ok
      FROM spend_counters c
      JOIN unnest(r.key_types, r.key_ids, r.key_periods, r.key_starts, p_caps) AS k(t, i, p, s, cap)
        ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
    IF v_ok THEN
        UPDATE spend_counters c
           SET reserved_micro = c.reserved_micro + p_amount, updated_at = p_now
          FROM unnest(r.key_types, r.key_ids, r.key_periods, r.key_starts) AS k(t, i, p, s)
         WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
        UPDATE spend_reservations
           SET reserved_micro = reserved_micro + p_amount, expires_at = p_expires
         WHERE request_id = p_request_id;
        RETURN 'granted';
    END IF;
    UPDATE spend_counters c
       SET exhausted_cap_micro = greatest(coalesce(c.exhausted_cap_micro, 0), k.cap), updated_at = p_now
      FROM unnest(r.key_types, r.key_ids, r.key_periods, r.key_starts, p_caps) AS k(t, i, p, s, cap)
     WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s
       AND k.cap IS NOT NULL AND c.spent_micro + c.reserved_micro + p_amount > k.cap;
    UPDATE spend_reservations SET expires_at = p_expires WHERE request_id = p_request_id;
    RETURN 'denied';
END;
$$;

-- Settle a request to its actual cost. Idempotent: the first call wins and
-- later ones return 'duplicate'. Returns 'settled' (an open reservation was
-- released and the cost charged), 'late' (the reservation had expired and been
-- charged its reserved amount; that charge is replaced by the actual cost), or
-- 'direct' (no reservation existed, e.g. an uncapped user: the keys given here
-- are charged and a settled row records the request so a repeat is ignored).
CREATE FUNCTION spend_settle(
    p_request_id text, p_sub text, p_model text,
    p_types text[], p_ids text[], p_periods text[], p_starts timestamptz[],
    p_actual bigint, p_now timestamptz
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r spend_reservations%ROWTYPE;
    v_delta_spent bigint;
    v_release bigint;
BEGIN
    SELECT * INTO r FROM spend_reservations WHERE request_id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO spend_reservations
            (request_id, sub, model, key_types, key_ids, key_periods, key_starts,
             reserved_micro, state, created_at, expires_at, settled_at, settled_micro)
        VALUES (p_request_id, p_sub, p_model, p_types, p_ids, p_periods, p_starts,
                0, 'settled', p_now, p_now, p_now, p_actual)
        ON CONFLICT (request_id) DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
        PERFORM spend_lock_counters(p_types, p_ids, p_periods, p_starts, p_now);
        UPDATE spend_counters c
           SET spent_micro = c.spent_micro + p_actual, updated_at = p_now
          FROM unnest(p_types, p_ids, p_periods, p_starts) AS k(t, i, p, s)
         WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
        RETURN 'direct';
    END IF;
    IF r.state = 'settled' THEN
        RETURN 'duplicate';
    END IF;
    IF r.state = 'open' THEN
        v_release := r.reserved_micro;
        v_delta_spent := p_actual;
    ELSE
        -- expired: the sweeper already moved settled_micro (the reserved amount) into spent
        v_release := 0;
        v_delta_spent := p_actual - r.settled_micro;
    END IF;
    PERFORM spend_lock_counters(r.key_types, r.key_ids, r.key_periods, r.key_starts, p_now);
    UPDATE spend_counters c
       SET spent_micro = c.spent_micro + v_delta_spent,
           reserved_micro = c.reserved_micro - v_release,
           updated_at = p_now
      FROM unnest(r.key_types, r.key_ids, r.key_periods, r.key_starts) AS k(t, i, p, s)
     WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
    UPDATE spend_reservations
       SET state = 'settled', settled_at = p_now, settled_micro = p_actual, late_settle = (r.state = 'expired')
     WHERE request_id = p_request_id;
    RETURN CASE WHEN r.state = 'open' THEN 'settled' ELSE 'late' END;
END;
$$;

-- Expire at most one open reservation whose owner stopped renewing it: its
-- reserved amount becomes spend. One per call (and so one per transaction)
-- keeps the counter locks in the fixed order; SKIP LOCKED lets several
-- replicas sweep at once without waiting on each other or on a live settle.
CREATE FUNCTION spend_expire_one(p_now timestamptz)
RETURNS TABLE (e_request_id text, e_sub text, e_model text, e_reserved bigint, e_created timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    r spend_reservations%ROWTYPE;
BEGIN
    SELECT * INTO r FROM spend_reservations
     WHERE state = 'open' AND expires_at <= p_now
     ORDER BY expires_at
     LIMIT 1
     FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM spend_lock_counters(r.key_types, r.key_ids, r.key_periods, r.key_starts, p_now);
    UPDATE spend_counters c
       SET spent_micro = c.spent_micro + r.reserved_micro,
           reserved_micro = c.reserved_micro - r.reserved_micro,
           updated_at = p_now
      FROM unnest(r.key_types, r.key_ids, r.key_periods, r.key_starts) AS k(t, i, p, s)
     WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
    UPDATE spend_reservations
       SET state = 'expired', settled_at = p_now, settled_micro = r.reserved_micro
     WHERE request_id = r.request_id;
    INSERT INTO admin_audit (at, actor, action, target, before, after, reason)
    VALUES (p_now, 'gatehouse', 'spend.reservation_expired', 'user:' || r.sub,
            jsonb_build_object('request_id', r.request_id, 'state', 'open', 'reserved_micro', r.reserved_micro,
                               'created_at', r.created_at, 'expires_at', r.expires_at),
            jsonb_build_object('request_id', r.request_id, 'state', 'expired', 'charged_micro', r.reserved_micro),
            'reservation expired without settlement; charged its reserved amount');
    RETURN QUERY SELECT r.request_id, r.sub, r.model, r.reserved_micro, r.created_at;
END;
$$;
