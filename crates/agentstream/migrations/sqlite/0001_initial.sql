-- Timestamps are UTC RFC 3339 text with microseconds, so they sort as text.
-- IDs are UUID v7 text.
CREATE TABLE users (
    id                      TEXT PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    onboarding_completed_at TEXT,
    created_at              TEXT NOT NULL
);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('chat', 'onboarding')),
    title      TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX conversations_by_user ON conversations (user_id, id);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    conversation_id   TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id           TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent             TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'cancelled', 'failed', 'interrupted')),
    client_message_id TEXT,
    on_disconnect     TEXT NOT NULL CHECK (on_disconnect IN ('continue', 'cancel')),
    error             TEXT,
    usage             TEXT,
    last_seq          INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    finished_at       TEXT
);
CREATE UNIQUE INDEX runs_client_message_id ON runs (conversation_id, client_message_id);
-- At most one running run per conversation: the multitask policy holds in
-- the database, across nodes. Queued runs wait behind it.
CREATE UNIQUE INDEX runs_one_running ON runs (conversation_id) WHERE status = 'running';
CREATE INDEX runs_active ON runs (status) WHERE status IN ('queued', 'running');
CREATE INDEX runs_by_conversation ON runs (conversation_id, id);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    run_id          TEXT REFERENCES runs (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    content         TEXT NOT NULL,
    tool_calls      TEXT,
    tool_call_id    TEXT,
    status          TEXT NOT NULL
        CHECK (status IN ('streaming', 'complete', 'cancelled', 'failed', 'interrupted')),
    created_at      TEXT NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

CREATE TABLE run_events (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE tool_calls (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    call_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    arguments  TEXT NOT NULL,
    output     TEXT NOT NULL,
    is_error   INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, call_id)
);

CREATE TABLE profiles (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    field      TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
);
