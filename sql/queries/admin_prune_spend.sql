-- Per-person spend counters of periods that started before the retention
-- cutoff. Group pool counters age out the same way.
DELETE FROM spend_counters WHERE period_start < $1
