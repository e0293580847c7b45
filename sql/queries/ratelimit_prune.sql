DELETE FROM rate_counters WHERE window_start < $1
