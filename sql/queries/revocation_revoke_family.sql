-- Revoke one family and tell every replica, in one statement (one
-- transaction): the notification is delivered only if the revocation commits.
-- $1 family id, $2 now, $3 reason.
WITH revoked AS (
    UPDATE session_families
    SET revoked_at = $2, revoke_reason = $3
    WHERE family_id = $1 AND revoked_at IS NULL
    RETURNING family_id, sub, email
)
SELECT family_id, sub, email, pg_notify('gatehouse_revocations', family_id) AS notified
FROM revoked
