-- A conversation started by an AI SDK client (`POST /v1/ai-sdk/chat`) keeps
-- the client's chat ID, any text the client chose, unique per user: the
-- conversation's own ID stays a UUID v7 made here, so it still sorts by
-- creation time.
ALTER TABLE conversations ADD COLUMN chat_id TEXT;
CREATE UNIQUE INDEX conversations_by_chat_id ON conversations (user_id, chat_id)
    WHERE chat_id IS NOT NULL;
