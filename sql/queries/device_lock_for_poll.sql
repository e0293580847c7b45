SELECT status, expires_at, last_poll_at, sub, email, name, groups, idp_refresh_token
FROM device_grants
WHERE device_code_hash = $1
FOR UPDATE
