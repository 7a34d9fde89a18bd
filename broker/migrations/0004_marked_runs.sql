-- A starting broker finds the unfinished runs with two reads (docs/ARCHITECTURE.md, "The
-- PostgreSQL store"): the newest runs, by sequence number from the setting
-- `runs_scan_from` on, and older ones still unfinished, each marked by the commit that
-- moved `runs_scan_from` past it. The index of unfinished runs it replaces made every
-- run's end change an indexed column (`finished`, its predicate), so that no run could
-- end with an update in place; now only the end of a marked run does.

ALTER TABLE jobcast_runs ADD COLUMN marked boolean NOT NULL DEFAULT false;
UPDATE jobcast_runs SET marked = true WHERE NOT finished;
DROP INDEX jobcast_runs_unfinished;
CREATE INDEX jobcast_runs_marked ON jobcast_runs (seq) WHERE marked;

-- Every unfinished run is marked: the newest may start anywhere past them.
INSERT INTO jobcast_settings (key, value)
SELECT 'runs_scan_from', int8send(coalesce(max(seq), 0) + 1) FROM jobcast_runs
ON CONFLICT (key) DO UPDATE SET value = excluded.value;
