-- The points op's tables for tools/bench-compare (psql -v members=N -f schema.sql).
-- members: one row per member and its balance, never below zero.
-- ledger: one immutable row per applied op, keyed by the op's random 128-bit request
-- id (a uuid column holds exactly 128 bits), with the balance it left.
CREATE TABLE members (
    id      integer PRIMARY KEY,
    balance bigint  NOT NULL CHECK (balance >= 0)
);
CREATE TABLE ledger (
    request_id uuid        PRIMARY KEY,
    member     integer     NOT NULL,
    delta      integer     NOT NULL,
    balance    bigint      NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
-- Every member starts with 10,000 points (ids 1..members).
INSERT INTO members (id, balance) SELECT g, 10000 FROM generate_series(1, :members) AS g;
-- Fresh statistics and visibility map, so the first run does not pay for them.
VACUUM ANALYZE members;
