-- Settling many requests in one round trip and one transaction.
--
-- The per-request outcomes are exactly those of spend_settle (0004): the first
-- settlement of a request id wins, an open reservation is released and the
-- actual cost charged ('settled'), an expired one has its charge replaced by
-- the actual cost ('late'), a request without a reservation charges the keys
-- given for it and leaves a settled row behind ('direct'), and any later
-- settlement of the same id changes nothing ('duplicate').
--
-- What differs is the locking and the counter writes:
--
-- * Reservation rows are visited in request id order, then the counter rows of
--   the whole batch are locked at once through spend_lock_counters (in its
--   fixed order). Every other writer takes at most one reservation row and
--   then counters in that same order, so a batch cannot deadlock with single
--   requests or with another replica's batch.
-- * A batch usually touches the same few counters many times over (one
--   person, one pool); their changes are summed first and each counter row is
--   updated once.
--
-- spend_settle stays: a replica still running the previous release calls it.

-- p_ids, p_subs, p_models, p_actuals (µUSD), p_nows are parallel, one entry
-- per settlement (a request id may appear more than once: the first wins).
-- The counter keys of settlement n are p_key_*[p_key_first[n] : p_key_first[n]
-- + p_key_count[n] - 1]; they are used only when no reservation row exists.
-- Returns the outcomes, parallel to p_ids.
CREATE FUNCTION spend_settle_many(
    p_ids text[], p_subs text[], p_models text[], p_actuals bigint[], p_nows timestamptz[],
    p_key_first int[], p_key_count int[],
    p_types text[], p_key_ids text[], p_periods text[], p_starts timestamptz[]
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
    -- Counter changes, one entry per (settlement, key); summed per counter at the end.
    d_types text[] := '{}';
    d_ids text[] := '{}';
    d_periods text[] := '{}';
    d_starts timestamptz[] := '{}';
    d_spent bigint[] := '{}';
    d_release bigint[] := '{}';
    v_latest timestamptz;
BEGIN
    FOR it IN
        SELECT u.ord::int AS ord, u.id, u.sub, u.model, u.actual, u.at
          FROM unnest(p_ids, p_subs, p_models, p_actuals, p_nows) WITH ORDINALITY AS u(id, sub, model, actual, at, ord)
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
            v_n := p_key_count[it.ord];
            IF v_n > 0 THEN
                d_types := d_types || p_types[v_first:v_last];
                d_ids := d_ids || p_key_ids[v_first:v_last];
                d_periods := d_periods || p_periods[v_first:v_last];
                d_starts := d_starts || p_starts[v_first:v_last];
                d_spent := d_spent || array_fill(it.actual, ARRAY[v_n]);
                d_release := d_release || array_fill(0::bigint, ARRAY[v_n]);
            END IF;
            v_out[it.ord] := 'direct';
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
