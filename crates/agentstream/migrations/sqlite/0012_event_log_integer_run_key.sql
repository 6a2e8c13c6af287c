-- The event log is keyed by a small integer per run instead of the run's
-- 36-character text ID. Every event row is an entry in the primary key's
-- index; with the text ID about 90 entries fit in a page, with the integer
-- about 300, and runs numbered in the order they start keep the entries of
-- the runs streaming now in the index's last pages. A commit that holds one
-- event from each of a few hundred streaming runs so dirties a few dozen
-- pages instead of a few hundred: fewer pages written to the WAL and again
-- by the checkpoint, and the write lock held that much shorter.
--
-- A run's key is its `event_key` in `runs`, taken from `run_key_sequence`
-- (one row: the last key given) by the statements that store the run. A key
-- is never given twice, not even after its run is deleted: a run's events
-- are written under the key its driver holds, so a key given again could
-- mix a late event of a deleted run into another run's log.
ALTER TABLE runs ADD COLUMN event_key INTEGER;
UPDATE runs SET event_key = rowid;
CREATE UNIQUE INDEX runs_by_event_key ON runs (event_key);
CREATE TABLE run_key_sequence (value INTEGER NOT NULL);
INSERT INTO run_key_sequence (value) SELECT COALESCE(MAX(event_key), 0) FROM runs;

-- SQLite cannot change a primary key, so the table is rebuilt; no other
-- table refers to run_events. Events of a run no longer stored (none
-- should exist: a run's events are deleted with it) are not copied.
CREATE TABLE run_events_new (
    run_key    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_key, seq)
);
INSERT INTO run_events_new (run_key, seq, type, data, created_at)
SELECT r.event_key, e.seq, e.type, e.data, e.created_at
FROM run_events e JOIN runs r ON r.id = e.run_id
ORDER BY r.event_key, e.seq;
DROP TABLE run_events;
ALTER TABLE run_events_new RENAME TO run_events;
