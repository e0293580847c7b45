SELECT device_code_hash, user_code, status, created_at, expires_at
FROM device_grants
WHERE device_code_hash = $1
