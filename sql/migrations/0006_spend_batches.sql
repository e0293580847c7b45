-- Admitting and topping up many requests per round trip.
--
-- spend_reserve_many: each request gets exactly the verdict spend_reserve (0004) would give it if
-- the requests of the batch had called it one after another, in batch order:
-- it is admitted iff every capped counter it draws from has room for spent +
-- reserved + its amount (and is not marked exhausted at that cap), and an
-- admitted request adds its amount to all of them and leaves an open
-- reservation row. A request id that already has a reservation row is reported
-- admitted and changes nothing.
--
-- Why it is safe to batch: every counter row of the batch is locked up front,
-- in spend_lock_counters' fixed order, before any request is judged, so the
-- requests are judged against counters no one else can move meanwhile, and a
-- batch cannot deadlock with single calls, settlements or another replica's
-- batch (they all lock counters in the same order and hold at most the
-- reservation rows they create or settle).
--
-- spend_reserve stays: a replica still running the previous release calls it.

-- p_ids, p_subs, p_models, p_amounts (µUSD), p_nows and p_expires are
-- parallel, one entry per request. The counter keys of request n are
-- p_key_*[p_key_first[n] : p_key_first[n] + p_key_count[n] - 1], with p_caps
-- (µUSD, NULL = no cap) parallel to the keys. Returns, for each request in
-- batch order, its verdict and its counters right after its own decision.
CREATE FUNCTION spend_reserve_many(
    p_ids text[], p_subs text[], p_models text[], p_amounts bigint[], p_nows timestamptz[],
    p_expires timestamptz[], p_key_first int[], p_key_count int[],
    p_types text[], p_key_ids text[], p_periods text[], p_starts timestamptz[], p_caps bigint[]
) RETURNS TABLE (
    r_ord int, r_admitted boolean, c_type text, c_id text, c_period text, c_start timestamptz,
    c_spent bigint, c_reserved bigint, c_exhausted bigint
) LANGUAGE plpgsql AS $$
DECLARE
    v_latest timestamptz;
    v_first int;
    v_last int;
    v_ok boolean;
    k_types text[];
    k_ids text[];
    k_periods text[];
    k_starts timestamptz[];
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN;
    END IF;
    SELECT max(x) INTO v_latest FROM unnest(p_nows) AS x;
    PERFORM spend_lock_counters(p_types, p_key_ids, p_periods, p_starts, v_latest);
    FOR n IN 1 .. cardinality(p_ids) LOOP
        v_first := p_key_first[n];
        v_last := v_first + p_key_count[n] - 1;
        k_types := coalesce(p_types[v_first:v_last], '{}');
        k_ids := coalesce(p_key_ids[v_first:v_last], '{}');
        k_periods := coalesce(p_periods[v_first:v_last], '{}');
        k_starts := coalesce(p_starts[v_first:v_last], '{}');
        PERFORM 1 FROM spend_reservations r WHERE r.request_id = p_ids[n];
        IF FOUND THEN
            v_ok := true;
        ELSE
            SELECT coalesce(bool_and(
                       k.cap IS NULL
                       OR ((c.exhausted_cap_micro IS NULL OR k.cap > c.exhausted_cap_micro)
                           AND c.spent_micro + c.reserved_micro + p_amounts[n] <= k.cap)), true)
              INTO v_ok
              FROM spend_counters c
              JOIN unnest(k_types, k_ids, k_periods, k_starts, coalesce(p_caps[v_first:v_last], '{}'))
                   AS k(t, i, p, s, cap)
                ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
            IF v_ok THEN
                UPDATE spend_counters c
                   SET reserved_micro = c.reserved_micro + p_amounts[n], updated_at = p_nows[n]
                  FROM unnest(k_types, k_ids, k_periods, k_starts) AS k(t, i, p, s)
                 WHERE c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
                INSERT INTO spend_reservations
                    (request_id, sub, model, key_types, key_ids, key_periods, key_starts,
                     reserved_micro, state, created_at, expires_at)
                VALUES (p_ids[n], p_subs[n], p_models[n], k_types, k_ids, k_periods, k_starts,
                        p_amounts[n], 'open', p_nows[n], p_expires[n]);
            END IF;
        END IF;
        RETURN QUERY
            SELECT n, v_ok, c.scope_type, c.scope_id, c.period, c.period_start,
                   c.spent_micro, c.reserved_micro, c.exhausted_cap_micro
              FROM spend_counters c
              JOIN unnest(k_types, k_ids, k_periods, k_starts) AS k(t, i, p, s)
                ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s;
    END LOOP;
END;
$$;

-- Topping up many running reservations in one round trip and one transaction.
-- Each gets the outcome spend_top_up (0004) would give it called in batch
-- order: 'granted' (every capped counter had room: the amount is added to the
-- reservation and its counters), 'denied' (nothing is added, and each counter
-- without room is marked exhausted at its cap) or 'closed' (no open
-- reservation: nothing to grow). The expiry of every open one moves to its
-- p_expires, its owner being evidently alive. Locks: the reservation rows in
-- request id order, then the counters through spend_lock_counters, as
-- everywhere else.
--
-- p_ids, p_amounts (µUSD), p_nows and p_expires are parallel, one entry per
-- top-up; the caps of top-up n, parallel to its reservation's stored keys, are
-- p_caps[p_cap_first[n] : p_cap_first[n] + p_cap_count[n] - 1]. Returns the
-- outcomes parallel to p_ids.
CREATE FUNCTION spend_top_up_many(
    p_ids text[], p_amounts bigint[], p_nows timestamptz[], p_expires timestamptz[],
    p_cap_first int[], p_cap_count int[], p_caps bigint[]
) RETURNS text[] LANGUAGE plpgsql
-- Left to choose, PostgreSQL plans these array-shaped statements afresh on every call,
-- which costs more than running them.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_latest timestamptz;
    v_ok boolean;
    v_cap bigint;
    v_slot int;
    v_at int := 1;
    v_from int;
    v_to int;
    -- Every key of every open reservation in the batch, in batch order: the
    -- top-up's position, the key's position among its reservation's keys.
    e_ord int[];
    e_kord int[];
    e_types text[];
    e_ids text[];
    e_periods text[];
    e_starts timestamptz[];
    e_slot int[];
    -- The distinct counters ("slots") as locked, then as changed.
    d_types text[];
    d_ids text[];
    d_periods text[];
    d_starts timestamptz[];
    d_spent bigint[];
    d_reserved bigint[];
    d_exhausted bigint[];
    d_reserved_was bigint[];
    d_exhausted_was bigint[];
    v_out text[];
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN '{}';
    END IF;
    v_out := array_fill('closed'::text, ARRAY[cardinality(p_ids)]);
    SELECT max(x) INTO v_latest FROM unnest(p_nows) AS x;
    PERFORM 1 FROM spend_reservations r
     WHERE r.request_id = ANY (p_ids)
     ORDER BY r.request_id COLLATE "C"
       FOR UPDATE;

    SELECT array_agg(w.ord::int ORDER BY w.ord, k.kord), array_agg(k.kord::int ORDER BY w.ord, k.kord),
           array_agg(k.t ORDER BY w.ord, k.kord), array_agg(k.i ORDER BY w.ord, k.kord),
           array_agg(k.p ORDER BY w.ord, k.kord), array_agg(k.s ORDER BY w.ord, k.kord)
      INTO e_ord, e_kord, e_types, e_ids, e_periods, e_starts
      FROM unnest(p_ids) WITH ORDINALITY AS w(id, ord)
      JOIN spend_reservations r ON r.request_id = w.id AND r.state = 'open'
     CROSS JOIN LATERAL unnest(r.key_types, r.key_ids, r.key_periods, r.key_starts) WITH ORDINALITY AS k(t, i, p, s, kord);
    IF e_ord IS NULL THEN
        RETURN v_out;  -- nothing open: every one is 'closed'
    END IF;

    PERFORM spend_lock_counters(e_types, e_ids, e_periods, e_starts, v_latest);
    SELECT array_agg(c.scope_type ORDER BY c.scope_type, c.scope_id, c.period, c.period_start),
           array_agg(c.scope_id ORDER BY c.scope_type, c.scope_id, c.period, c.period_start),
           array_agg(c.period ORDER BY c.scope_type, c.scope_id, c.period, c.period_start),
           array_agg(c.period_start ORDER BY c.scope_type, c.scope_id, c.period, c.period_start),
           array_agg(c.spent_micro ORDER BY c.scope_type, c.scope_id, c.period, c.period_start),
           array_agg(c.reserved_micro ORDER BY c.scope_type, c.scope_id, c.period, c.period_start),
           array_agg(c.exhausted_cap_micro ORDER BY c.scope_type, c.scope_id, c.period, c.period_start)
      INTO d_types, d_ids, d_periods, d_starts, d_spent, d_reserved, d_exhausted
      FROM (SELECT DISTINCT k.t, k.i, k.p, k.s FROM unnest(e_types, e_ids, e_periods, e_starts) AS k(t, i, p, s)) k
     -- One primary-key probe per counter. A scan would also read every dead version the
     -- constant updates leave behind until vacuum comes by (LIMIT keeps the probe a probe).
     CROSS JOIN LATERAL (
           SELECT * FROM spend_counters x
            WHERE x.scope_type = k.t AND x.scope_id = k.i AND x.period = k.p AND x.period_start = k.s
            LIMIT 1) c;
    d_reserved_was := d_reserved;
    d_exhausted_was := d_exhausted;
    SELECT array_agg(d.slot::int ORDER BY k.n)
      INTO e_slot
      FROM unnest(e_types, e_ids, e_periods, e_starts) WITH ORDINALITY AS k(t, i, p, s, n)
      JOIN unnest(d_types, d_ids, d_periods, d_starts) WITH ORDINALITY AS d(t, i, p, s, slot)
        ON d.t = k.t AND d.i = k.i AND d.p = k.p AND d.s = k.s;

    -- e_* are sorted by top-up: walk them once, a top-up's keys at a time.
    WHILE v_at <= cardinality(e_ord) LOOP
        v_from := v_at;
        WHILE v_at <= cardinality(e_ord) AND e_ord[v_at] = e_ord[v_from] LOOP
            v_at := v_at + 1;
        END LOOP;
        v_to := v_at - 1;
        v_ok := true;
        FOR j IN v_from .. v_to LOOP
            v_cap := p_caps[p_cap_first[e_ord[j]] + e_kord[j] - 1];
            v_slot := e_slot[j];
            IF v_cap IS NOT NULL AND d_spent[v_slot] + d_reserved[v_slot] + p_amounts[e_ord[j]] > v_cap THEN
                v_ok := false;
                d_exhausted[v_slot] := greatest(coalesce(d_exhausted[v_slot], 0), v_cap);
            END IF;
        END LOOP;
        IF v_ok THEN
            FOR j IN v_from .. v_to LOOP
                d_reserved[e_slot[j]] := d_reserved[e_slot[j]] + p_amounts[e_ord[j]];
            END LOOP;
            v_out[e_ord[v_from]] := 'granted';
        ELSE
            v_out[e_ord[v_from]] := 'denied';
        END IF;
    END LOOP;

    UPDATE spend_counters c
       SET reserved_micro = d.reserved, exhausted_cap_micro = d.exhausted, updated_at = v_latest
      FROM unnest(d_types, d_ids, d_periods, d_starts, d_reserved, d_exhausted, d_reserved_was, d_exhausted_was)
           AS d(t, i, p, s, reserved, exhausted, reserved_was, exhausted_was)
     WHERE c.scope_type = d.t AND c.scope_id = d.i AND c.period = d.p AND c.period_start = d.s
       AND (d.reserved <> d.reserved_was OR d.exhausted IS DISTINCT FROM d.exhausted_was);
    UPDATE spend_reservations r
       SET reserved_micro = r.reserved_micro + g.amount, expires_at = g.expires
      FROM (SELECT w.id,
                   sum(CASE WHEN v_out[w.ord] = 'granted' THEN p_amounts[w.ord] ELSE 0 END)::bigint AS amount,
                   max(p_expires[w.ord]) AS expires
              FROM unnest(p_ids) WITH ORDINALITY AS w(id, ord)
             WHERE v_out[w.ord] <> 'closed'
             GROUP BY w.id) g
     WHERE r.request_id = g.id;
    RETURN v_out;
END;
$$;
