-- A starting broker finds the unfinished runs with two reads (docs/ARCHITECTURE.md, "The
-- PostgreSQL store"): the newest runs, by sequence number from
-- `jobcast_runs_scan.scan_from` on, and older ones still unfinished, each marked by the commit that
-- moved `scan_from` past it. The index of unfinished runs it replaces made every
-- run's end change an indexed column (`finished`, its predicate), so that no run could
-- end with an update in place; now only the end of a marked run does.

ALTER TABLE jobcast_runs ADD COLUMN marked boolean NOT NULL DEFAULT false;
UPDATE jobcast_runs SET marked = true WHERE NOT finished;
DROP INDEX jobcast_runs_unfinished;
CREATE INDEX jobcast_runs_marked ON jobcast_runs (seq) WHERE marked;

-- Where the read of the newest runs begins: one row, moved by the leader's commits. Every
-- unfinished run is marked here, so it may begin past them all.
CREATE TABLE jobcast_runs_scan (
    id        integer PRIMARY KEY CHECK (id = 1),
    scan_from bigint  NOT NULL
);
INSERT INTO jobcast_runs_scan (id, scan_from)
SELECT 1, coalesce(max(seq), 0) + 1 FROM jobcast_runs;
