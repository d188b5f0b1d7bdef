-- Version 4: the training monitor. Alerts (the engine's anomaly rules and the studio's own
-- decisions) get their own table so the job page and the dashboard can list them, and the
-- worker's telemetry samples (process, machine and GPU readings, about one every two seconds)
-- are kept as JSON with their time and step.

CREATE TABLE alerts (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts         INTEGER NOT NULL,
    step       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL,
    suggestion TEXT NOT NULL,
    source     TEXT NOT NULL
);
CREATE INDEX alerts_by_job ON alerts (job_id, id);

CREATE TABLE telemetry (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts     INTEGER NOT NULL,
    step   INTEGER NOT NULL,
    sample TEXT NOT NULL,
    PRIMARY KEY (job_id, ts)
) WITHOUT ROWID;
