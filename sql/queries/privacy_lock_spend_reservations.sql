-- Erasure: lock a person's reservation rows first, in request id order, as the
-- settling functions (0005/0007) do before their counters, so an erasure and a
-- settlement running at once cannot deadlock. $1 subjects.
SELECT 1 FROM spend_reservations WHERE sub = ANY($1::text[]) ORDER BY request_id COLLATE "C" FOR UPDATE
