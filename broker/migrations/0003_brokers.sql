-- Several brokers on one database: each broker says it is alive here when it renews the
-- leader's lease or tries to take it, so that `status` and the dashboard can list them.
-- Rows of brokers not seen for an hour are removed by the next that takes the lease.

CREATE TABLE jobcast_brokers (
    holder   text        PRIMARY KEY,
    router   text        NOT NULL,
    publish  text        NOT NULL,
    http     text        NOT NULL,
    seen_at  timestamptz NOT NULL
);
