-- Erasure: a person's reservations and leases name their pseudonym, in the row and in
-- the counter keys it charges, so one still open settles onto the moved counters.
-- $1 subjects, $2 pseudonyms (parallel). Returns the rows changed, and how many were open.
WITH changed AS (
    UPDATE spend_reservations r
    SET sub = m.alias,
        key_ids = ARRAY(SELECT CASE WHEN k.t = 'user' AND k.i = m.sub THEN m.alias ELSE k.i END
                        FROM unnest(r.key_types, r.key_ids) WITH ORDINALITY AS k(t, i, n) ORDER BY k.n)
    FROM unnest($1::text[], $2::text[]) AS m(sub, alias)
    WHERE r.sub = m.sub
    RETURNING r.state
)
SELECT count(*) AS changed, count(*) FILTER (WHERE state = 'open') AS open FROM changed
