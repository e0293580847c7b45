SELECT version, name, sha256 FROM gatehouse_migrations ORDER BY version
