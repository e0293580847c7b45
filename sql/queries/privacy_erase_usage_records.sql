-- Erasure: a person's raw usage rows stay for the totals, under their pseudonym and without the email.
-- $1 subjects, $2 pseudonyms (parallel).
UPDATE usage_records u SET sub = m.alias, email = NULL
FROM unnest($1::text[], $2::text[]) AS m(sub, alias)
WHERE u.sub = m.sub
