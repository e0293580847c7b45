-- Erasure: a person's families keep only what revocation needs (id, times,
-- revoked_at) under their pseudonym until session pruning deletes them; their
-- refresh token rows go. $1 subjects, $2 pseudonyms (parallel). Returns the family ids.
WITH m AS (SELECT * FROM unnest($1::text[], $2::text[]) AS m(sub, alias)),
families AS (
    UPDATE session_families f
    SET sub = m.alias, email = NULL, name = NULL, groups = '{}', client_ip = NULL, idp_refresh_token = NULL
    FROM m WHERE f.sub = m.sub
    RETURNING f.family_id
), tokens AS (
    DELETE FROM session_refresh_tokens t USING families f WHERE t.family_id = f.family_id
)
SELECT family_id FROM families
