-- The journal of undoable changes moves to memory (memory's migration 0003, which runs first:
-- memory migrates before sleep), because each entry commits with memory's change. A database
-- may hold an interrupted run's journal, which the run that resumes it needs for its rollback:
-- those entries are copied over, ids and order kept, before sleep's table goes.
INSERT INTO memory_changes (id, run, namespace, stage, kind, ref, before)
    SELECT id, run, namespace, stage, kind, ref, before FROM sleep_changes ORDER BY id;

DROP TABLE sleep_changes;
