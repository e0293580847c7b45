-- Leases: headroom a replica reserves for a person in advance and admits against in memory
-- (gateway/spend_leases.py has the why and the invariants).
--
-- A lease is an open spend_reservations row whose request id starts with 'lease:'. It is
-- granted by spend_reserve_many like any reservation, grown by spend_top_up_many, and
-- renewed, shrunk and given back by spend_lease_renew below. Its owner writes down, at each
-- renewal, how much of it running requests hold (lease_in_flight_micro): that is what the
-- expiry sweep charges if the owner dies; the rest is released unspent.

ALTER TABLE spend_reservations ADD COLUMN lease_in_flight_micro bigint;

-- Settle many requests (the spend_settle_many of 0005), where a request admitted against a
-- lease names it in p_leases (NULL otherwise) with p_moves the amount its settlement moves out
-- of the lease: a request without a reservation row of its own ('direct') charges its actual
-- cost to its keys as before, and when its lease is still open, up to p_moves of the lease's
-- reservation is released from the same counters in the same transaction. A lease that has
-- expired or been given back meanwhile releases nothing (its reservation is already gone).
--
-- Locks: every reservation row named (requests and leases alike) in request id order first,
-- then the counters through spend_lock_counters, as every other writer does.
CREATE FUNCTION spend_settle_many(
    p_ids text[], p_subs text[], p_models text[], p_actuals bigint[], p_nows timestamptz[],
    p_key_first int[], p_key_count int[],
    p_types text[], p_key_ids text[], p_periods text[], p_starts timestamptz[],
    p_leases text[], p_moves bigint[]
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_out text[] := array_fill(NULL::text, ARRAY[cardinality(p_ids)]);
    it record;
    r spend_reservations%ROWTYPE;
    v_first int;
    v_last int;
    v_n int;
    v_spent bigint;
    v_release bigint;
    d_types text[] := '{}';
    d_ids text[] := '{}';
    d_periods text[] := '{}';
    d_starts timestamptz[] := '{}';
    d_spent bigint[] := '{}';
    d_release bigint[] := '{}';
    v_latest timestamptz;
BEGIN
    PERFORM 1 FROM spend_reservations
     WHERE request_id = ANY (p_ids) OR request_id = ANY (p_leases)
     ORDER BY request_id COLLATE "C"
       FOR UPDATE;
    FOR it IN
        SELECT u.ord::int AS ord, u.id, u.sub, u.model, u.actual, u.at, u.lease, u.mv
          FROM unnest(p_ids, p_subs, p_models, p_actuals, p_nows, p_leases, p_moves)
               WITH ORDINALITY AS u(id, sub, model, actual, at, lease, mv, ord)
         ORDER BY u.id COLLATE "C", u.ord
    LOOP
        v_latest := greatest(v_latest, it.at);
        SELECT * INTO r FROM spend_reservations WHERE request_id = it.id FOR UPDATE;
        IF NOT FOUND THEN
            v_first := p_key_first[it.ord];
            v_last := v_first + p_key_count[it.ord] - 1;
            INSERT INTO spend_reservations
                (request_id, sub, model, key_types, key_ids, key_periods, key_starts,
                 reserved_micro, state, created_at, expires_at, settled_at, settled_micro)
            VALUES (it.id, it.sub, it.model, coalesce(p_types[v_first:v_last], '{}'),
                    coalesce(p_key_ids[v_first:v_last], '{}'), coalesce(p_periods[v_first:v_last], '{}'),
                    coalesce(p_starts[v_first:v_last], '{}'), 0, 'settled', it.at, it.at, it.at, it.actual)
            ON CONFLICT (request_id) DO NOTHING;
            IF NOT FOUND THEN
                v_out[it.ord] := 'duplicate';
                CONTINUE;
            END IF;
            v_release := 0;
            IF it.lease IS NOT NULL AND coalesce(it.mv, 0) > 0 THEN
                SELECT least(it.mv, l.reserved_micro) INTO v_release
                  FROM spend_reservations l WHERE l.request_id = it.lease AND l.state = 'open';
                v_release := coalesce(v_release, 0);
                UPDATE spend_reservations SET reserved_micro = reserved_micro - v_release
                 WHERE request_id = it.lease AND v_release > 0;
            END IF;
            v_n := p_key_count[it.ord];
            IF v_n > 0 THEN
                d_types := d_types || p_types[v_first:v_last];
                d_ids := d_ids || p_key_ids[v_first:v_last];
                d_periods := d_periods || p_periods[v_first:v_last];
                d_starts := d_starts || p_starts[v_first:v_last];
                d_spent := d_spent || array_fill(it.actual, ARRAY[v_n]);
                d_release := d_release || array_fill(v_release, ARRAY[v_n]);
            END IF;
            v_out[it.ord] := CASE WHEN it.lease IS NULL THEN 'direct' ELSE 'leased' END;
            CONTINUE;
        END IF;
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
