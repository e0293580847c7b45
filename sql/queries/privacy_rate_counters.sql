-- Sign-in rate counters of the addresses a person signed in from (keys 'devauth:<ip>', 'verify:<ip>';
-- an address may be shared by others behind it). $1 keys.
SELECT * FROM rate_counters WHERE key = ANY($1::text[]) ORDER BY key, window_start
