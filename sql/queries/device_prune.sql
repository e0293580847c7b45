DELETE FROM device_grants WHERE expires_at < $1
