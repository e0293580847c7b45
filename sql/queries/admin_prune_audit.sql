DELETE FROM admin_audit WHERE at < $1
