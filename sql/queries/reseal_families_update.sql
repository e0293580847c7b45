-- Store re-sealed IdP refresh tokens, each only where the row still holds the
-- exact bytes it was re-sealed from (compare and swap): a refresh that stored
-- a token meanwhile wins, and of several replicas re-sealing the same row at
-- once exactly one writes it. $1 family ids, $2 old bytes, $3 new bytes.
UPDATE session_families AS f
SET idp_refresh_token = u.new
FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS u (id, old, new)
WHERE f.family_id = u.id AND f.idp_refresh_token = u.old
