-- The event log is the hottest table: every SSE event is a row. Its foreign
-- key to runs cost every inserted row a lookup of the run and a share lock
-- on the run's row (PostgreSQL's referential check runs a query per row).
-- Events are only ever written for a run already stored (the run and its
-- first event commit together; the event log writes later events of runs it
-- drives), and a conversation's deletion deletes its runs' events itself,
-- in its transaction (`Store::delete_conversation`), as the cascade did.
ALTER TABLE run_events DROP CONSTRAINT run_events_run_id_fkey;
