-- Tokens issued (iat) before this moment (epoch seconds) are revoked: a logout or a password
-- change moves it on, and every service compares a token's iat with it (shopkit.revocation).
ALTER TABLE users ADD COLUMN tokens_valid_from bigint NOT NULL DEFAULT 0;
