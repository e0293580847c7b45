-- As reseal_families_update, for device grants: compare and swap on the old
-- bytes. $1 device code hashes, $2 old bytes, $3 new bytes.
UPDATE device_grants AS d
SET idp_refresh_token = u.new
FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS u (id, old, new)
WHERE d.device_code_hash = u.id AND d.idp_refresh_token = u.old
