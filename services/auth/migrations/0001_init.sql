-- Accounts. `email` is stored trimmed and lowercased, so the unique constraint
-- treats "Ana@Example.com" and "ana@example.com" as one address.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('customer', 'staff', 'admin')),
    created_at    BIGINT NOT NULL
);

-- Ed25519 token signing keys. `seed` is the 32-byte private seed in standard
-- base64 and `public_x` the public key in base64url without padding, as the JWK
-- `x` member carries it. The service signs with the oldest row (by created_at,
-- then kid) and creates one on its first start.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    seed       TEXT NOT NULL,
    public_x   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
