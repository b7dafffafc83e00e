-- A redemption (pgbench script, weight 3): subtract 1..1000 points from a random
-- member only if the balance stays >= 0. When it would not, the UPDATE matches no row,
-- so the INSERT has nothing to insert: the op is rejected and writes nothing (and its
-- commit, having written no WAL, waits for no flush). Same request id as accrue.sql.
\set id random(1, :members)
\set n random(1, 1000)
\set r1 random(0, 4294967295)
\set r2 random(0, 4294967295)
\set r3 random(0, 4294967295)
\set r4 random(0, 4294967295)
WITH u AS (UPDATE members SET balance = balance - :n WHERE id = :id AND balance >= :n
           RETURNING id, balance)
INSERT INTO ledger (request_id, member, delta, balance)
SELECT (lpad(to_hex(:r1::bigint), 8, '0') || lpad(to_hex(:r2::bigint), 8, '0') ||
        lpad(to_hex(:r3::bigint), 8, '0') || lpad(to_hex(:r4::bigint), 8, '0'))::uuid,
       u.id, -(:n::integer), u.balance
FROM u;
