-- Leases: headroom a replica reserves for a person in advance and admits against in memory
-- (gateway/spend_leases.py has the why and the invariants).
--
-- A lease is an open spend_reservations row whose request id starts with 'lease:'. It is
-- granted by spend_reserve_many like any reservation, grown by spend_top_up_many, and
-- renewed, shrunk and given back by spend_lease_renew below. Its owner writes down, at each
-- renewal, how much of it running requests hold (lease_in_flight_micro): that is what the
-- expiry sweep charges if the owner dies; the rest is released unspent.

ALTER TABLE spend_reservations ADD COLUMN lease_in_flight_micro bigint;

-- Settle many requests: the outcomes of 0005's spend_settle_many, plus leases. A request
-- admitted against a lease names it in p_leases (NULL otherwise), with p_moves the amount its
-- settlement moves out of the lease. Such a request has no reservation row of its own: like an
-- uncapped one ('direct') it leaves a settled row and charges its actual cost to its keys, and,
-- while its lease is still open, up to p_moves of the lease's reservation is released from the
-- same counters in the same transaction ('leased'). A lease that has expired or been given back
-- meanwhile releases nothing: its reservation is already gone.
--
-- Requests with a reservation row of their own are settled one at a time as before. Those
-- without one (most, once leases are in use) are stored with one insert for the whole batch,
-- their lease moves summed per lease, and every counter updated once.
--
-- Locks: every reservation row named (requests and leases alike) in request id order first,
-- then the counters through spend_lock_counters, as every other writer does.
CREATE FUNCTION spend_settle_many(
    p_ids text[], p_subs text[], p_models text[], p_actuals bigint[], p_nows timestamptz[],
    p_key_first int[], p_key_count int[],
    p_types text[], p_key_ids text[], p_periods text[], p_starts timestamptz[],
    p_leases text[], p_moves bigint[]
) RETURNS text[] LANGUAGE plpgsql
-- As in spend_top_up_many: these array-shaped statements would otherwise be planned anew on every call.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_out text[] := array_fill(NULL::text, ARRAY[cardinality(p_ids)]);
    it record;
    r spend_reservations%ROWTYPE;
    v_spent bigint;
    v_release bigint;
    v_n int;
    v_fresh int[];  -- positions of the requests stored by the one insert
    l_ids text[];  -- leases still open, and what their requests' settlements release from each
    l_release bigint[];
    d_types text[] := '{}';
    d_ids text[] := '{}';
    d_periods text[] := '{}';
    d_starts timestamptz[] := '{}';
    d_spent bigint[] := '{}';
    d_release bigint[] := '{}';
    x_types text[];
    x_ids text[];
    x_periods text[];
    x_starts timestamptz[];
    x_spent bigint[];
    x_release bigint[];
    v_latest timestamptz;
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN '{}';
    END IF;
    SELECT max(x) INTO v_latest FROM unnest(p_nows) AS x;
    PERFORM 1 FROM spend_reservations
     WHERE request_id = ANY (p_ids) OR request_id = ANY (p_leases)
     ORDER BY request_id COLLATE "C"
       FOR UPDATE;

    -- Requests with a row of their own (reserved in the database, or already settled).
    FOR it IN
        SELECT u.ord::int AS ord, u.id, u.actual, u.at
          FROM unnest(p_ids, p_actuals, p_nows) WITH ORDINALITY AS u(id, actual, at, ord)
         WHERE EXISTS (SELECT 1 FROM spend_reservations s WHERE s.request_id = u.id)
         ORDER BY u.id COLLATE "C", u.ord
    LOOP
        SELECT * INTO r FROM spend_reservations WHERE request_id = it.id;
        IF r.state = 'settled' THEN
            v_out[it.ord] := 'duplicate';
            CONTINUE;
        END IF;
        IF r.state = 'open' THEN
            v_release := r.reserved_micro;
            v_spent := it.actual;
        ELSE
            -- expired: the sweeper already moved settled_micro (the reserved amount) into spent
            v_release := 0;
            v_spent := it.actual - r.settled_micro;
        END IF;
        v_n := cardinality(r.key_types);
        IF v_n > 0 THEN
            d_types := d_types || r.key_types;
            d_ids := d_ids || r.key_ids;
            d_periods := d_periods || r.key_periods;
            d_starts := d_starts || r.key_starts;
            d_spent := d_spent || array_fill(v_spent, ARRAY[v_n]);
            d_release := d_release || array_fill(v_release, ARRAY[v_n]);
        END IF;
        UPDATE spend_reservations
           SET state = 'settled', settled_at = it.at, settled_micro = it.actual,
               late_settle = (r.state = 'expired')
         WHERE request_id = it.id;
        v_out[it.ord] := CASE WHEN r.state = 'open' THEN 'settled' ELSE 'late' END;
    END LOOP;

    -- Requests without one: one insert; the first of a repeated id wins, the others are duplicates.
    WITH fresh AS (
        SELECT DISTINCT ON (u.id) u.ord::int AS ord, u.id, u.sub, u.model, u.actual, u.at
          FROM unnest(p_ids, p_subs, p_models, p_actuals, p_nows) WITH ORDINALITY AS u(id, sub, model, actual, at, ord)
         WHERE v_out[u.ord] IS NULL
           AND NOT EXISTS (SELECT 1 FROM spend_reservations s WHERE s.request_id = u.id)
         ORDER BY u.id, u.ord
    ), stored AS (
        INSERT INTO spend_reservations
            (request_id, sub, model, key_types, key_ids, key_periods, key_starts,
             reserved_micro, state, created_at, expires_at, settled_at, settled_micro)
        SELECT f.id, f.sub, f.model,
               coalesce(p_types[p_key_first[f.ord] : p_key_first[f.ord] + p_key_count[f.ord] - 1], '{}'),
               coalesce(p_key_ids[p_key_first[f.ord] : p_key_first[f.ord] + p_key_count[f.ord] - 1], '{}'),
               coalesce(p_periods[p_key_first[f.ord] : p_key_first[f.ord] + p_key_count[f.ord] - 1], '{}'),
               coalesce(p_starts[p_key_first[f.ord] : p_key_first[f.ord] + p_key_count[f.ord] - 1], '{}'),
               0, 'settled', f.at, f.at, f.at, f.actual
          FROM fresh f
        ON CONFLICT (request_id) DO NOTHING
        RETURNING request_id
    )
    SELECT array_agg(f.ord) INTO v_fresh FROM fresh f JOIN stored s ON s.request_id = f.id;
    v_fresh := coalesce(v_fresh, '{}');
    FOR n IN 1 .. cardinality(v_fresh) LOOP
        v_out[v_fresh[n]] := CASE WHEN p_leases[v_fresh[n]] IS NULL THEN 'direct' ELSE 'leased' END;
    END LOOP;
    FOR n IN 1 .. cardinality(v_out) LOOP
        v_out[n] := coalesce(v_out[n], 'duplicate');
    END LOOP;

    -- What they move out of their leases, summed per lease; a lease no longer open releases nothing.
    SELECT array_agg(l.request_id), array_agg(least(m.mv, l.reserved_micro))
      INTO l_ids, l_release
      FROM (SELECT p_leases[o] AS lease, sum(p_moves[o])::bigint AS mv
              FROM unnest(v_fresh) AS o
             WHERE p_leases[o] IS NOT NULL AND p_moves[o] > 0
             GROUP BY 1) m
      JOIN spend_reservations l ON l.request_id = m.lease AND l.state = 'open';
    UPDATE spend_reservations l
       SET reserved_micro = l.reserved_micro - x.rel
      FROM unnest(l_ids, l_release) AS x(id, rel)
     WHERE l.request_id = x.id;

    -- The counter changes: their costs charged to their keys, the releases to their leases' keys.
    SELECT array_agg(c.t), array_agg(c.i), array_agg(c.p), array_agg(c.s), array_agg(c.sp), array_agg(c.rl)
      INTO x_types, x_ids, x_periods, x_starts, x_spent, x_release
      FROM (SELECT p_types[k] AS t, p_key_ids[k] AS i, p_periods[k] AS p, p_starts[k] AS s,
                   p_actuals[o] AS sp, 0::bigint AS rl
              FROM unnest(v_fresh) AS o
             CROSS JOIN LATERAL generate_series(p_key_first[o], p_key_first[o] + p_key_count[o] - 1) AS k
            UNION ALL
            SELECT k.t, k.i, k.p, k.s, 0::bigint, x.rel
              FROM unnest(l_ids, l_release) AS x(id, rel)
              JOIN spend_reservations l ON l.request_id = x.id
             CROSS JOIN LATERAL unnest(l.key_types, l.key_ids, l.key_periods, l.key_starts) AS k(t, i, p, s)) c;
    IF x_types IS NOT NULL THEN
        d_types := d_types || x_types;
        d_ids := d_ids || x_ids;
        d_periods := d_periods || x_periods;
        d_starts := d_starts || x_starts;
        d_spent := d_spent || x_spent;
        d_release := d_release || x_release;
    END IF;

    IF cardinality(d_types) > 0 THEN
        PERFORM spend_lock_counters(d_types, d_ids, d_periods, d_starts, v_latest);
        UPDATE spend_counters c
           SET spent_micro = c.spent_micro + d.spent,
               reserved_micro = c.reserved_micro - d.released,
               updated_at = v_latest
          FROM (SELECT k.t, k.i, k.p, k.s, sum(k.sp)::bigint AS spent, sum(k.rl)::bigint AS released
                  FROM unnest(d_types, d_ids, d_periods, d_starts, d_spent, d_release) AS k(t, i, p, s, sp, rl)
                 GROUP BY k.t, k.i, k.p, k.s) d
         WHERE c.scope_type = d.t AND c.scope_id = d.i AND c.period = d.p AND c.period_start = d.s;
    END IF;
    RETURN v_out;
END;
$$;

-- Renew a replica's leases in one round trip: each open one gets p_expires and the amount its
-- running requests hold (p_in_flight); one with a p_keeps entry also shrinks to that amount,
-- releasing the rest from its counters, and is closed ('settled', nothing charged) when that
-- leaves nothing. Returns, per lease in p_ids order, whether it is (was) open, with its
-- counters after the change (one row per counter; a single row of NULLs when it is not open,
-- including one just closed).
CREATE FUNCTION spend_lease_renew(
    p_ids text[], p_in_flight bigint[], p_keeps bigint[], p_now timestamptz, p_expires timestamptz
) RETURNS TABLE (
    l_ord int, l_open boolean, c_type text, c_id text, c_period text, c_start timestamptz,
    c_spent bigint, c_reserved bigint, c_exhausted bigint
) LANGUAGE plpgsql AS $$
DECLARE
    d_types text[] := '{}';
    d_ids text[] := '{}';
    d_periods text[] := '{}';
    d_starts timestamptz[] := '{}';
    d_release bigint[] := '{}';
    v_release bigint;
    r record;
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT s.request_id, s.reserved_micro, s.key_types, s.key_ids, s.key_periods, s.key_starts,
               w.ord::int AS ord
          FROM unnest(p_ids) WITH ORDINALITY AS w(id, ord)
          JOIN spend_reservations s ON s.request_id = w.id AND s.state = 'open'
         ORDER BY s.request_id COLLATE "C"
           FOR UPDATE OF s
    LOOP
        v_release := CASE WHEN p_keeps[r.ord] IS NULL THEN 0
                          ELSE greatest(r.reserved_micro - p_keeps[r.ord], 0) END;
        UPDATE spend_reservations
           SET reserved_micro = reserved_micro - v_release,
               lease_in_flight_micro = p_in_flight[r.ord],
               expires_at = p_expires,
               state = CASE WHEN p_keeps[r.ord] = 0 AND reserved_micro - v_release = 0 THEN 'settled' ELSE 'open' END,
               settled_at = CASE WHEN p_keeps[r.ord] = 0 AND reserved_micro - v_release = 0 THEN p_now END,
               settled_micro = CASE WHEN p_keeps[r.ord] = 0 AND reserved_micro - v_release = 0 THEN 0 END
         WHERE request_id = r.request_id;
        IF v_release > 0 THEN
            d_types := d_types || r.key_types;
            d_ids := d_ids || r.key_ids;
            d_periods := d_periods || r.key_periods;
            d_starts := d_starts || r.key_starts;
            d_release := d_release || array_fill(v_release, ARRAY[cardinality(r.key_types)]);
        END IF;
    END LOOP;
    IF cardinality(d_types) > 0 THEN
        PERFORM spend_lock_counters(d_types, d_ids, d_periods, d_starts, p_now);
        UPDATE spend_counters c
           SET reserved_micro = c.reserved_micro - d.released, updated_at = p_now
          FROM (SELECT k.t, k.i, k.p, k.s, sum(k.rl)::bigint AS released
                  FROM unnest(d_types, d_ids, d_periods, d_starts, d_release) AS k(t, i, p, s, rl)
                 GROUP BY k.t, k.i, k.p, k.s) d
         WHERE c.scope_type = d.t AND c.scope_id = d.i AND c.period = d.p AND c.period_start = d.s;
    END IF;
    RETURN QUERY
        SELECT w.ord::int, s.request_id IS NOT NULL,
               c.scope_type, c.scope_id, c.period, c.period_start,
               c.spent_micro, c.reserved_micro, c.exhausted_cap_micro
          FROM unnest(p_ids) WITH ORDINALITY AS w(id, ord)
          LEFT JOIN spend_reservations s ON s.request_id = w.id AND s.state = 'open'
          LEFT JOIN LATERAL unnest(s.key_types, s.key_ids, s.key_periods, s.key_starts) AS k(t, i, p, st) ON true
          LEFT JOIN spend_counters c
            ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.st
         ORDER BY w.ord;
END;
$$;

-- Expiry (0004's spend_expire_one) learns about leases: a lease whose owner stopped renewing it
-- is charged what its running requests held at the last renewal, and the rest of its
-- reservation is released; an ordinary reservation is charged its whole reserved amount, as
-- before.
CREATE OR REPLACE FUNCTION spend_expire_one(p_now timestamptz)
RETURNS TABLE (e_request_id text, e_sub text, e_model text, e_reserved bigint, e_created timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    r spend_reservations%ROWTYPE;
    v_lease boolean;
    v_charge bigint;
BEGIN
    SELECT * INTO r FROM spend_reservations
     WHERE state = 'open' AND expires_at <= p_now
     ORDER BY expires_at
     LIMIT 1
     FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_lease := r.request_id LIKE 'lease:%';
    v_charge := CASE WHEN v_lease THEN least(coalesce(r.lease_in_flight_micro, 0), r.reserved_micro)
                     ELSE r.reserved_micro END;
    PERFORM spend_lock_counters(r.key_types, r.key_ids, r.key_periods, r.key_starts, p_now);
    UPDATE spend_counters c
       SET spent_micro = c.spent_micro + v_charge,
           reserved_micro = c.reserved_micro - r.reserved_micro,
           updated_at = p_now
      FROM unnest(r.key_types, r.key_ids, r.key_periods, r.key_starts) AS k(t, i, p, s)
     WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
    UPDATE spend_reservations
       SET state = 'expired', settled_at = p_now, settled_micro = v_charge
     WHERE request_id = r.request_id;
    INSERT INTO admin_audit (at, actor, action, target, before, after, reason)
    VALUES (p_now, 'gatehouse', CASE WHEN v_lease THEN 'spend.lease_expired' ELSE 'spend.reservation_expired' END,
            'user:' || r.sub,
            jsonb_build_object('request_id', r.request_id, 'state', 'open', 'reserved_micro', r.reserved_micro,
                               'created_at', r.created_at, 'expires_at', r.expires_at),
            jsonb_build_object('request_id', r.request_id, 'state', 'expired', 'charged_micro', v_charge),
            CASE WHEN v_lease
                 THEN 'lease expired without renewal; charged what its requests held at the last renewal'
                 ELSE 'reservation expired without settlement; charged its reserved amount' END);
    RETURN QUERY SELECT r.request_id, r.sub, r.model, v_charge, r.created_at;
END;
$$;
