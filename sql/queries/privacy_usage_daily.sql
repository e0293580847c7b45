-- A person's daily usage sums. $1 subjects.
SELECT * FROM usage_daily WHERE sub = ANY($1::text[]) ORDER BY day, sub, model, upstream
