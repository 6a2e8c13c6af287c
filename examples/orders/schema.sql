-- The shop's own database: agentstream reads and writes it through the
-- tools in agentstream.toml, for the signed-in customer only.
CREATE TABLE orders (
    id         INTEGER PRIMARY KEY,
    customer   TEXT NOT NULL,
    item       TEXT NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    status     TEXT NOT NULL DEFAULT 'open',
    created_at TEXT NOT NULL
);
INSERT INTO orders (customer, item, quantity, status, created_at) VALUES
    ('ada',   'teapot',   1, 'shipped', '2026-11-02T10:00:00Z'),
    ('grace', 'compiler', 3, 'open',    '2026-11-03T09:30:00Z');
