-- A live replay (docs/tasks.md, Replay) is a task of its own that runs the plan of a finished
-- task again; replay_of names that task, whose steps' outputs task.get compares with its own.
ALTER TABLE tasks_runs ADD COLUMN replay_of TEXT;
