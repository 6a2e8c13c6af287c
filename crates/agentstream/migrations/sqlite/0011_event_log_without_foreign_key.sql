-- The event log is the hottest table: every SSE event is a row. Its foreign
-- key to runs cost every inserted row a lookup of the run. Events are only
-- ever written for a run already stored (the run and its first event commit
-- together; the event log writes later events of runs it drives), and a
-- conversation's deletion deletes its runs' events itself, in its
-- transaction (`Store::delete_conversation`), as the cascade did.
--
-- SQLite cannot drop a constraint, so the table is rebuilt: no other table
-- refers to run_events, so dropping the old one touches nothing else.
CREATE TABLE run_events_new (
    run_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
INSERT INTO run_events_new (run_id, seq, type, data, created_at)
SELECT run_id, seq, type, data, created_at FROM run_events;
DROP TABLE run_events;
ALTER TABLE run_events_new RENAME TO run_events;
