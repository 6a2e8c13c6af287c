-- The conversation list is ordered by last activity (updated_at, then id,
-- both descending), paged with a cursor on the pair.
CREATE INDEX conversations_by_activity ON conversations (user_id, updated_at, id);

-- A retried reply (POST /v1/runs/{id}/retry) stays in the transcript,
-- marked superseded, and is not sent to the model again; an edited
-- question is superseded with its reply.
ALTER TABLE messages ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0;
