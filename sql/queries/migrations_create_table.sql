-- Created by the migrator itself (under the migration lock), before any migration runs.
CREATE TABLE IF NOT EXISTS gatehouse_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
