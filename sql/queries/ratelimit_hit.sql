INSERT INTO rate_counters (key, window_start, hits) VALUES ($1, $2, 1)
ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_counters.hits + 1
RETURNING hits
