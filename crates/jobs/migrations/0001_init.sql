-- Version 1: jobs, the attempts (worker runs) of each job, metric points, eval points, log lines,
-- checkpoints, and the catalog of datasets and registered models. Times are Unix milliseconds.

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN
                    ('pending', 'running', 'paused', 'completed', 'failed', 'cancelled', 'interrupted')),
    method        TEXT NOT NULL,
    model_path    TEXT NOT NULL,
    dataset_path  TEXT NOT NULL,
    device        TEXT NOT NULL,
    config_json   TEXT NOT NULL,
    output_dir    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    current_step  INTEGER NOT NULL DEFAULT 0,
    total_steps   INTEGER NOT NULL DEFAULT 0,
    current_epoch REAL NOT NULL DEFAULT 0,
    total_epochs  REAL NOT NULL DEFAULT 0,
    current_loss  REAL,
    best_loss     REAL,
    eval_loss     REAL,
    tokens        INTEGER NOT NULL DEFAULT 0,
    tokens_per_s  REAL,
    elapsed_s     REAL,
    eta_s         REAL,
    error_message TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
CREATE INDEX jobs_by_created ON jobs (created_at);

CREATE TABLE attempts (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    number     INTEGER NOT NULL,
    pid        INTEGER,
    resume     INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    exit_code  INTEGER,
    outcome    TEXT
);
CREATE INDEX attempts_by_job ON attempts (job_id, number);

CREATE TABLE metrics (
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    epoch        REAL,
    loss         REAL,
    lr           REAL,
    grad_norm    REAL,
    tokens       INTEGER,
    tokens_per_s REAL,
    mem_bytes    INTEGER,
    elapsed_s    REAL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;

CREATE TABLE eval_metrics (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    eval_loss  REAL,
    perplexity REAL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;

CREATE TABLE logs (
    id      INTEGER PRIMARY KEY,
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts      INTEGER NOT NULL,
    level   TEXT NOT NULL,
    source  TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_job ON logs (job_id, id);

CREATE TABLE checkpoints (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    path       TEXT NOT NULL,
    loss       REAL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
);

CREATE TABLE datasets (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    path       TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    uploaded   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE models (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    path       TEXT NOT NULL UNIQUE,
    family     TEXT,
    created_at INTEGER NOT NULL
);
