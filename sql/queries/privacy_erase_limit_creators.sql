-- Erasure: spend limits a person created as an admin signed in through OIDC name
-- their pseudonym as creator. $1 subjects, $2 pseudonyms (parallel).
UPDATE spend_limits l SET created_by = 'oidc:' || m.alias
FROM unnest($1::text[], $2::text[]) AS m(sub, alias)
WHERE l.created_by = 'oidc:' || m.sub
