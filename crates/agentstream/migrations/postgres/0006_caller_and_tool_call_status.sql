-- Who started a run, as its tools see it: `{"subject": …, "claims": {…}}`
-- (claims from a verified token; none for API keys). Kept with the run so a
-- run driven later, or by another node, binds the same caller parameters.
ALTER TABLE runs ADD COLUMN caller TEXT;
-- A tool call whose effect lies outside this database (another database, an
-- HTTP backend) is recorded as `started` before it runs and `finished` after,
-- and never run again: a call a crash or a stop left `started` is finished
-- as "interrupted, outcome unknown". Calls recorded before this finished.
ALTER TABLE tool_calls ADD COLUMN status TEXT NOT NULL DEFAULT 'finished'
    CHECK (status IN ('started', 'finished'));
