-- Erasure: spend limits on a person move to their pseudonym (after
-- privacy_erase_limits_superseded). $1 subjects, $2 pseudonyms (parallel).
UPDATE spend_limits l SET scope_id = m.alias
FROM unnest($1::text[], $2::text[]) AS m(sub, alias)
WHERE l.scope_type = 'user' AND l.scope_id = m.sub
