-- An accrual (pgbench script, weight 7): add 1..1000 points to a random member and
-- append its ledger row, as one autocommit statement (one transaction, one commit).
-- The request id is drawn by pgbench (the client), as a client chooses its own
-- idempotency key: four independent 32-bit numbers, 8 hex digits each, 128 bits.
\set id random(1, :members)
\set n random(1, 1000)
\set r1 random(0, 4294967295)
\set r2 random(0, 4294967295)
\set r3 random(0, 4294967295)
\set r4 random(0, 4294967295)
WITH u AS (UPDATE members SET balance = balance + :n WHERE id = :id RETURNING id, balance)
INSERT INTO ledger (request_id, member, delta, balance)
SELECT (lpad(to_hex(:r1::bigint), 8, '0') || lpad(to_hex(:r2::bigint), 8, '0') ||
        lpad(to_hex(:r3::bigint), 8, '0') || lpad(to_hex(:r4::bigint), 8, '0'))::uuid,
       u.id, :n::integer, u.balance
FROM u;
