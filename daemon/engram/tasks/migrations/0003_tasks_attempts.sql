-- The tool calls a step made (docs/tasks.md, Retries and circuit breakers): more than one when
-- an idempotent tool was retried. NULL for a step that made none or has not ended.
ALTER TABLE tasks_steps ADD COLUMN attempts INTEGER;
