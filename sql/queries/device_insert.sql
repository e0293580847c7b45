INSERT INTO device_grants (device_code_hash, user_code, status, surface, client_ip, created_at, expires_at)
VALUES ($1, $2, 'pending', $3, $4, $5, $6)
