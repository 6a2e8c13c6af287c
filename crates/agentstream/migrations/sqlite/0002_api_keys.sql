-- API keys: only a SHA-256 hash of each key is stored; the prefix lets
-- people tell keys apart in listings.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    prefix     TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX api_keys_active ON api_keys (hash) WHERE revoked_at IS NULL;
CREATE INDEX runs_by_user_active ON runs (user_id) WHERE status IN ('queued', 'running');
