UPDATE device_grants
SET last_poll_at = $2, status = COALESCE($3, status),
    idp_refresh_token = CASE WHEN $3 = 'consumed' THEN NULL ELSE idp_refresh_token END
WHERE device_code_hash = $1
