-- Revoke every live family of one person (email in any letter case) and tell
-- every replica. Families past their maximum lifetime hold no usable token
-- (access tokens never outlive the family), so they are left as they are.
-- $1 email, $2 now, $3 reason.
WITH revoked AS (
    UPDATE session_families
    SET revoked_at = $2, revoke_reason = $3
    WHERE lower(email) = lower($1) AND revoked_at IS NULL AND expires_at > $2
    RETURNING family_id, sub, email
)
SELECT family_id, sub, email, pg_notify('gatehouse_revocations', family_id) AS notified
FROM revoked
