-- A person's charged requests and leases (kept a week after settling). $1 subjects.
SELECT * FROM spend_reservations WHERE sub = ANY($1::text[]) ORDER BY created_at, request_id
