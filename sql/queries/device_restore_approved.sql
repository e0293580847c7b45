UPDATE device_grants SET status = 'approved', idp_refresh_token = $2
WHERE device_code_hash = $1 AND status = 'consumed'
