-- Erasure: the sign-in rate counters of the addresses a person signed in from. $1 keys.
DELETE FROM rate_counters WHERE key = ANY($1::text[])
