UPDATE device_grants
SET status = 'denied', decided_at = $2
WHERE device_code_hash = $1 AND status = 'pending' AND expires_at > $2
RETURNING 1
