SELECT device_code_hash, user_code, status, surface, client_ip, created_at, expires_at
FROM device_grants
WHERE user_code = $1 AND status = 'pending' AND expires_at > $2
