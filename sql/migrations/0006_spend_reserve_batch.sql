-- Admitting many requests in one round trip and one transaction.
--
-- Each request gets exactly the verdict spend_reserve (0004) would give it if
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
