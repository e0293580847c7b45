-- Erasure, step 1: revoke a person's live sign-in families and tell every replica
-- (delivered when the erasure commits). $1 subjects, $2 email, $3 now.
WITH revoked AS (
    UPDATE session_families
    SET revoked_at = $3, revoke_reason = 'erased'
    WHERE (sub = ANY($1::text[]) OR lower(email) = lower($2)) AND revoked_at IS NULL AND expires_at > $3
    RETURNING family_id
)
SELECT family_id, pg_notify('gatehouse_revocations', family_id) AS notified FROM revoked
