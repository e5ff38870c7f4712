-- Provenance of a step (docs/tasks.md, Proofs): the hash of its resolved input, stored
-- content-addressed in tasks_outputs beside the outputs, and the seq of the audit entry
-- ("task.step") that records it, which task.prove proves.
ALTER TABLE tasks_steps ADD COLUMN input_hash TEXT;
ALTER TABLE tasks_steps ADD COLUMN audit_seq INTEGER;
