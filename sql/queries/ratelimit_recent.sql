-- Sliding-window rate limits (gateway/auth/rate_window.py): one row per instant an
-- attempt was admitted (window_start holds that instant; hits > 1 only when
-- several were admitted at the same microsecond).
SELECT window_start, hits FROM rate_counters WHERE key = $1 AND window_start > $2 ORDER BY window_start
