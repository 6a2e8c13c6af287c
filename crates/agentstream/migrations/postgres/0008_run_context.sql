-- What a run's last model call sent of its conversation, for agents with a
-- context window: {messages_sent, messages_dropped, tokens, context_tokens}
-- as JSON text, stored with the run's end. Null for runs before this, runs
-- that made no model call, and agents without a window (the demo model).
ALTER TABLE runs ADD COLUMN context TEXT;
