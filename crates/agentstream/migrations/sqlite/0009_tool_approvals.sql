-- Human approval of tool calls. A run can pause, `requires_action`, until
-- its user decides on the calls it asked about, and end `expired` when no
-- decision comes in time (`expires_at`).
--
-- SQLite cannot alter a CHECK constraint, and rebuilding `runs` inside the
-- migration's transaction would cascade to every table that refers to it
-- (foreign keys cannot be turned off inside a transaction). The constraint
-- only admits more values, which every stored row already satisfies, so
-- its text is rewritten in the schema: the procedure SQLite documents for
-- loosening constraints (https://sqlite.org/lang_altertable.html#otheralter).
-- The DDL that follows changes the schema version, so every connection
-- reads the new text before its next statement.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, '''failed'', ''interrupted'')',
                  '''failed'', ''interrupted'', ''requires_action'', ''expired'')')
WHERE type = 'table' AND name = 'runs';
PRAGMA writable_schema = RESET;
ALTER TABLE runs ADD COLUMN expires_at TEXT;
-- The paused runs, by when their wait runs out: the sweep's index.
CREATE INDEX runs_awaiting ON runs (expires_at) WHERE status = 'requires_action';

-- The calls a run asked the user about: one row per call, in the order of
-- the model's reply (`position`), its decision written once (NULL until
-- then; 1 approved, 0 denied).
CREATE TABLE tool_approvals (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    call_id      TEXT NOT NULL,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    arguments    TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    approved     INTEGER CHECK (approved IN (0, 1)),
    reason       TEXT,
    decided_at   TEXT,
    PRIMARY KEY (run_id, call_id)
);
