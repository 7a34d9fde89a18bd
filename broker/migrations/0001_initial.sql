-- The broker's records, as the embedded store keeps them: one table per kind of record.
-- Runs and job versions are stored in the broker's compact MessagePack layout
-- (`record`, `spec`); the columns beside them are what the database indexes and what an
-- operator can query without decoding.

CREATE TABLE jobcast_runs (
    seq           bigint  PRIMARY KEY,
    -- A cron tick's run id is derived from (job, fire time): unique here, a tick is at
    -- most one run whichever broker writes it.
    -- Byte order ("C"), so that a prefix of an id is a range of the index.
    id            text    COLLATE "C" NOT NULL UNIQUE,
    job           text    NOT NULL,
    state         text    NOT NULL,
    finished      boolean NOT NULL,
    created_at_ms bigint  NOT NULL,
    record        bytea   NOT NULL
);

-- What a start reads back: the runs that have not ended.
CREATE INDEX jobcast_runs_unfinished ON jobcast_runs (seq) WHERE NOT finished;

-- Job spec versions that runs refer to, by the start of the SHA-256 of their bytes.
CREATE TABLE jobcast_job_specs (
    key  bytea PRIMARY KEY,
    spec bytea NOT NULL
);

CREATE TABLE jobcast_jobs (
    name text  PRIMARY KEY,
    spec bytea NOT NULL
);

CREATE TABLE jobcast_job_states (
    job   text  PRIMARY KEY,
    state bytea NOT NULL
);

CREATE TABLE jobcast_log_chunks (
    run_id text   NOT NULL,
    "offset" bigint NOT NULL,
    data   bytea  NOT NULL,
    PRIMARY KEY (run_id, "offset")
);

CREATE TABLE jobcast_workers (
    id     text  PRIMARY KEY,
    status bytea NOT NULL
);

-- Small named settings (the disabled pools, replay floors, the pruned-runs count).
CREATE TABLE jobcast_settings (
    key   text  PRIMARY KEY,
    value bytea NOT NULL
);
