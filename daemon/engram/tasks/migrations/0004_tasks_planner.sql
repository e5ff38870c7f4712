-- The planner (docs/tasks.md, Planner): the goal a task was submitted with, the plans the
-- planner made for it (0: its plan came with it; 1: planned; more: replanned after failed
-- steps), and how it planned (JSON: the providers that answered and the router's decision ids,
-- which the task's outcome is fed back to). A task with a goal and no plan yet has the plan
-- {"steps": []} and no steps until a worker plans it; a restart does not plan it again.
ALTER TABLE tasks_runs ADD COLUMN goal TEXT;
ALTER TABLE tasks_runs ADD COLUMN plans INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks_runs ADD COLUMN planner TEXT CHECK (planner IS NULL OR json_valid(planner));
