-- Last-seen identities (PII) of people inactive since the cutoff. A returning
-- person's row is rewritten with a newer updated_at, and PostgreSQL re-checks
-- the condition on a row changed concurrently, so it is never removed.
DELETE FROM principals WHERE updated_at < $1
