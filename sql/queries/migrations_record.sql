INSERT INTO gatehouse_migrations (version, name, sha256) VALUES ($1, $2, $3)
