-- Several nodes on one database: each node holds one lease, renewed by its
-- heartbeat, covering every run it drives (runs.owner_node). A node whose
-- lease ran out is dead, and another node marks its runs interrupted. A
-- cancel asked for on another node is recorded on the run, so the owner
-- sees it at its next heartbeat even if the notification was lost.
CREATE TABLE nodes (
    id               TEXT PRIMARY KEY,
    started_at       TEXT NOT NULL,
    lease_expires_at TEXT NOT NULL
);
ALTER TABLE runs ADD COLUMN owner_node TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested_at TEXT;
CREATE INDEX runs_by_owner ON runs (owner_node) WHERE status = 'running';
