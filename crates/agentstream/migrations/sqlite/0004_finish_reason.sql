-- Why the model stopped writing an assistant message, as the upstream said
-- it (`stop`, `tool_calls`, `length`, `content_filter`, …); NULL when the
-- model gave no reason (the scripted model) or the message did not end.
ALTER TABLE messages ADD COLUMN finish_reason TEXT;
