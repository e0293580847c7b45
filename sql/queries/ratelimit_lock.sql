-- Serialises "count, then record" for one rate-limit key across replicas, until
-- the transaction ends. Run alone, before ratelimit_recent: that statement's
-- snapshot must be taken after the lock is held.
SELECT pg_advisory_xact_lock(hashtextextended($1, 7))
