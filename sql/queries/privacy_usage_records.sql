-- A person's raw usage rows, oldest first. $1 subjects, $2 email.
SELECT * FROM usage_records WHERE sub = ANY($1::text[]) OR lower(email) = lower($2) ORDER BY ts, request_id
