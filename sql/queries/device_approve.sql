UPDATE device_grants
SET status = 'approved', decided_at = $2, sub = $3, email = $4, name = $5, groups = $6::jsonb, idp_refresh_token = $7
WHERE device_code_hash = $1 AND status = 'pending' AND expires_at > $2
RETURNING 1
