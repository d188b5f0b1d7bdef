-- Version 2: a job's published adapter (a checkpoint "deployed" by the user), the restart policy
-- (how many times a crashed or interrupted worker is started again from its last checkpoint), a
-- flag that makes the next worker resume, and the evaluation loss and size of each checkpoint.

ALTER TABLE jobs ADD COLUMN published_adapter TEXT;
ALTER TABLE jobs ADD COLUMN max_restarts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN resume_next INTEGER NOT NULL DEFAULT 0;
ALTER TABLE checkpoints ADD COLUMN eval_loss REAL;
ALTER TABLE checkpoints ADD COLUMN size_bytes INTEGER;
