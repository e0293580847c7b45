-- A migration may rewrite or index a large table; a statement_timeout set on the
-- role as a backstop for everyday queries must not cancel it half way. LOCAL: it
-- ends with the migration's transaction, so no pooled session keeps it.
SET LOCAL statement_timeout = 0
