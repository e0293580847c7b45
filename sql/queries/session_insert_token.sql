-- A refresh token of a family, by hash only.
INSERT INTO session_refresh_tokens (token_hash, family_id, issued_at)
VALUES ($1, $2, $3)
