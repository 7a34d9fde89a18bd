-- Several brokers on one database: the lease that makes one of them the leader, and the
-- fence every commit of the leader passes (docs/ARCHITECTURE.md, "Several brokers").

CREATE TABLE jobcast_leader (
    -- One row, always.
    id          integer     PRIMARY KEY CHECK (id = 1),
    -- Rises by one at each takeover; a commit carries the epoch it was made under.
    epoch       bigint      NOT NULL,
    -- The broker process holding the lease ('' while nobody does).
    holder      text        NOT NULL,
    -- Where workers and operators reach the holder.
    router      text        NOT NULL,
    publish     text        NOT NULL,
    http        text        NOT NULL,
    taken_at    timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    -- Judged by the database's clock alone: the brokers' clocks need not agree.
    expires_at  timestamptz NOT NULL
);

INSERT INTO jobcast_leader (id, epoch, holder, router, publish, http, taken_at, renewed_at, expires_at)
VALUES (1, 0, '', '', '', '', '-infinity', '-infinity', '-infinity');

-- The first statement of every commit of a leader: holds the lease row FOR SHARE until the
-- commit ends (a takeover's UPDATE waits for it, so every commit that passed is ordered
-- before the takeover), and aborts the transaction unless `epoch` still holds an
-- unexpired lease.
CREATE FUNCTION jobcast_fence(mine bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
    current_expiry timestamptz;
BEGIN
    SELECT epoch, expires_at INTO current_epoch, current_expiry
        FROM jobcast_leader WHERE id = 1 FOR SHARE;
    IF current_epoch IS DISTINCT FROM mine THEN
        RAISE EXCEPTION 'jobcast: epoch % no longer holds the lease (epoch % does)', mine, current_epoch
            USING ERRCODE = 'JC001';
    END IF;
    IF current_expiry <= clock_timestamp() THEN
        RAISE EXCEPTION 'jobcast: the lease of epoch % expired at %', mine, current_expiry
            USING ERRCODE = 'JC001';
    END IF;
END;
$$;

-- Room in each page of runs, so that a run's row rewritten at claim and start can stay in
-- its page (an update in place, no new index entries) more often.
ALTER TABLE jobcast_runs SET (fillfactor = 70);
