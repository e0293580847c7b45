-- $1 now. Expires at most one overdue reservation; no row when none is due.
SELECT e_request_id, e_sub, e_model, e_reserved, e_created FROM spend_expire_one($1)
