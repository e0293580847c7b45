-- Forget finished reservations settled before $1; they are only kept to make settling idempotent.
DELETE FROM spend_reservations WHERE state <> 'open' AND settled_at < $1
