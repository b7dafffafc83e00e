#!/usr/bin/env python3
"""The Python client (clients/python, package tally) against a real TLS cluster.

Every command the mall and a partner use, queries and status through the package;
the three outcomes kept apart (Rejected, Unavailable, UnknownOutcome) and a command
whose outcome was unknown applied once when sent again with its request id; a client
pointed at a follower first following the leader; a batch with a rejection inside;
and the two example programs (clients/python/examples) run end to end.

Run: python3 tests/test_python_client.py   (after make; TALLY_BUILD picks the build)
"""

import os
import signal
import subprocess
import sys
import time
import unittest
import uuid

from localcluster import BUILD, ROOT, TALLYCTL, start, stop

PY_DIR = os.path.join(ROOT, "clients", "python")
LIB = os.path.join(BUILD, "libtally.so")
DEBIAN_PYTHON = "/usr/bin/python3"  # with python3-protobuf (make deps)


def reexec():
    """Runs this test again under Debian's python3 (the one with python3-protobuf, where
    another python3 comes first in PATH) and, for a sanitizer build, with the ASan
    runtime loaded first, as its libtally needs (the interpreter's own leaks are not
    ours to report)."""
    env, python, again = dict(os.environ), sys.executable, False
    if os.path.exists(DEBIAN_PYTHON) and os.path.realpath(python) != os.path.realpath(DEBIAN_PYTHON):
        python, again = DEBIAN_PYTHON, True
    if os.path.basename(BUILD) == "san" and not env.get("TALLY_PY_ASAN"):
        asan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True).stdout.strip()
        env.update(TALLY_PY_ASAN="1", LD_PRELOAD=asan,
                   ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0")
        again = True
    if again:
        os.execve(python, [python] + sys.argv, env)


reexec()
sys.path[:0] = [os.path.join(BUILD, "python"), PY_DIR]
os.environ["TALLY_LIB"] = LIB
try:
    import tally  # noqa: E402  (the paths above first)
    from tally import Rejected, Unavailable, UnknownOutcome, pb  # noqa: E402
    SKIP = None
except ImportError as e:  # no python3-protobuf, or make has not built tally_pb2.py
    SKIP = "the tally package cannot load (%s): python3-protobuf missing from %s?" % (
        e, sys.executable)


@unittest.skipIf(SKIP is not None, SKIP)
class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir, cls.base, cls.env = start("tally-python-", ["--partners", "borealis"])
        try:
            cls.admin = cls.client("admin")
            cls.admin.register_brand("aurora", "Aurora Motors", currency="CNY", request_id="py-b1")
            cls.admin.register_brand("borealis", request_id="py-b2")
            cls.admin.set_agreement("aurora", "borealis", 1, 2, price_micros=4000, request_id="py-a1")
            for m in ("alice", "bob"):
                cls.admin.open_member(m, request_id="py-m-" + m)
            cls.client("dealer").accrue("aurora", "alice", 20000, reason="purchase", request_id="py-w1")
        except BaseException:
            stop(cls.dir, cls.env)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.admin.close()
        stop(cls.dir, cls.env)

    @classmethod
    def client(cls, key, **kw):
        kw.setdefault("cluster", cls.env["TALLY_CLUSTER"])
        return tally.Client(key_file=os.path.join(cls.env["TALLY_KEY_DIR"], key + ".key"),
                            ca=cls.env["TALLY_CA"], **kw)

    def available(self, member, brand="aurora"):
        return self.admin.balance(brand, member).available

    def test_the_mall_holds_captures_voids_and_refunds(self):
        with self.client("mall") as t:
            before = self.available("alice")
            h = t.hold("aurora", "alice", 1000, timeout_s=3600, request_id="py-h1")
            self.assertEqual((h.available, h.held), (before - 1000, 1000))
            c = t.capture(h.hold_id, points=800, request_id="py-c1")
            self.assertEqual((c.points, c.available, c.held), (800, before - 800, 0))
            h2 = t.hold("aurora", "alice", 50, request_id="py-h2")
            self.assertEqual(t.void(h2.hold_id, request_id="py-v1").available, before - 800)
            r = t.refund(c.entry_seq, points=300, reason="returned", request_id="py-r1")
            self.assertEqual(r.available, before - 500)
            again = t.refund(c.entry_seq, points=300, reason="returned", request_id="py-r1")
            self.assertTrue(again.replay)  # the same request id: answered, not applied twice
            self.assertEqual(self.available("alice"), before - 500)
            with self.assertRaises(Rejected) as e:
                t.capture(h.hold_id, request_id="py-c2")
            self.assertEqual(e.exception.code, pb.HOLD_RESOLVED)

    def test_a_rejection_is_definite_and_changes_nothing(self):
        with self.client("mall") as t:
            before = self.available("alice")
            with self.assertRaises(Rejected) as e:
                t.redeem("aurora", "alice", before + 1, request_id="py-too-much")
            self.assertEqual(e.exception.code, pb.INSUFFICIENT_POINTS)
            self.assertEqual(e.exception.request_id, "py-too-much")
            with self.assertRaises(Rejected) as e:
                t.redeem("nosuch", "alice", 1)
            self.assertEqual(e.exception.code, pb.UNKNOWN_BRAND)
            self.assertEqual(self.available("alice"), before)
        with self.assertRaises(Rejected) as e:
            self.admin.query(pb.Query(brand=pb.GetBrand(id="nosuch")))
        self.assertEqual(e.exception.code, pb.UNKNOWN_BRAND)

    def test_nobody_listening_is_unavailable(self):
        with self.assertRaises(Unavailable) as e:
            self.client("mall", cluster="127.0.0.1:1", timeout_ms=300)
        self.assertEqual(e.exception.code, pb.UNAVAILABLE)

    def test_an_unknown_outcome_is_applied_once_when_sent_again(self):
        t = self.client("dealer", timeout_ms=300, retries=0)
        before = self.available("bob")
        pids = []
        for i in (1, 2, 3):
            with open(os.path.join(self.dir, "node%d.pid" % i)) as f:
                pids.append(int(f.read()))
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        try:
            with self.assertRaises(UnknownOutcome) as e:
                t.accrue("aurora", "bob", 70, request_id="py-unknown")
        finally:
            for p in pids:
                os.kill(p, signal.SIGCONT)
        self.assertEqual(e.exception.request_id, "py-unknown")
        t.close()
        with self.client("dealer", timeout_ms=15000) as t2:
            r = t2.accrue("aurora", "bob", 70, request_id=e.exception.request_id)
        self.assertEqual(r.available, before + 70)  # once, whichever try applied it
        self.assertEqual(self.available("bob"), before + 70)

    def test_a_client_pointed_at_a_follower_reaches_the_leader(self):
        st = self.admin.status()
        leader = [n for n in st.nodes if n.id == st.leader.id][0]
        followers = [n.client_address for n in st.nodes if n.id != st.leader.id]
        with self.client("dealer", cluster=",".join(followers + [leader.client_address])) as t:
            self.assertEqual(t.accrue("aurora", "alice", 5).code, pb.OK)
            self.assertEqual(t.address, leader.client_address)

    def test_a_batch_answers_each_command(self):
        # Sent to a follower first, without the client's own retries: a batch that
        # reached no leader is redirected whole (libtally follows it), even with a
        # command the key's role may not run (refused at every node's door alike).
        st = self.admin.status()
        leader = [n for n in st.nodes if n.id == st.leader.id][0]
        followers = [n.client_address for n in st.nodes if n.id != st.leader.id]
        with self.client("mall", cluster=",".join(followers + [leader.client_address]),
                         retries=0) as t:
            cmds = [pb.Command(redeem=pb.Redeem(brand="aurora", member="alice", points=1)),
                    pb.Command(redeem=pb.Redeem(brand="aurora", member="alice", points=10 ** 9)),
                    pb.Command(redeem=pb.Redeem(brand="aurora", member="alice", points=2)),
                    pb.Command(accrue=pb.Accrue(brand="aurora", member="alice", points=3))]
            rs = t.batch(cmds)
        self.assertEqual([r.code for r in rs],
                         [pb.OK, pb.INSUFFICIENT_POINTS, pb.OK, pb.PERMISSION_DENIED])
        self.assertTrue(all(c.request_id for c in cmds))
        # Each answer is its own command's, whole: the balance after each, the reason
        # for each refusal (the ledger's, and the server's for a role), no text on OK.
        self.assertEqual(rs[0].available - 2, rs[2].available)
        self.assertTrue(rs[0].entry_seq and rs[2].entry_seq > rs[0].entry_seq)
        self.assertEqual((rs[0].message, rs[2].message), ("", ""))
        self.assertTrue(rs[1].message)
        self.assertEqual(rs[1].entry_seq, 0)
        self.assertIn("role", rs[3].message)

    def test_queries_and_status(self):
        entries, _ = self.admin.entries(limit=3)
        self.assertEqual([e.seq for e in entries], [1, 2, 3])
        self.assertEqual(self.admin.brand("aurora").currency, "CNY")
        st = self.admin.status()
        self.assertEqual(len(st.nodes), 3)
        self.assertTrue(st.leader.id)

    def test_fresh_request_ids_are_uuid7s_rising_with_time(self):
        """A command sent without a request id gets one that rises with time, so the
        ledger's claims of them land together (README, Idempotency)."""
        ids = [tally.new_request_id(now_ms=1764900000000 + i // 3) for i in range(300)]
        self.assertEqual(len(set(ids)), 300)  # three a millisecond, told apart at random
        for i, rid in enumerate(ids):
            self.assertRegex(rid, "^[0-9a-f]{32}$")
            u = uuid.UUID(hex=rid)
            self.assertEqual((u.version, u.variant), (7, uuid.RFC_4122))
            self.assertEqual(int(rid[:12], 16), 1764900000000 + i // 3)
        self.assertEqual([r[:12] for r in sorted(ids)], [r[:12] for r in ids])
        t0 = int(time.time() * 1000)
        now = int(tally.new_request_id()[:12], 16)
        self.assertTrue(t0 <= now <= int(time.time() * 1000))

    def test_a_key_file_others_can_read_is_refused(self):
        path = os.path.join(self.dir, "loose.key")
        with open(os.path.join(self.env["TALLY_KEY_DIR"], "mall.key")) as f, open(path, "w") as g:
            g.write(f.read())
        os.chmod(path, 0o644)
        with self.assertRaises(ValueError):
            tally.Client(cluster=self.env["TALLY_CLUSTER"], key_file=path, ca=self.env["TALLY_CA"])

    def run_example(self, name, key, *args):
        env = dict(self.env, TALLY_LIB=LIB, TALLY_KEY_FILE=os.path.join(self.env["TALLY_KEY_DIR"],
                                                                        key + ".key"),
                   PYTHONPATH=os.pathsep.join([os.path.join(BUILD, "python"), PY_DIR]))
        r = subprocess.run([sys.executable, os.path.join(PY_DIR, "examples", name)] + list(args),
                           env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def test_the_example_programs_run(self):
        self.client("dealer").accrue("aurora", "bob", 5000, request_id="py-ex-bob")
        out = self.run_example("mall_checkout.py", "mall", "--brand", "aurora", "--member", "bob",
                               "--order", "ex-1")
        self.assertIn("captured 1200 at shipment", out)
        self.assertIn("refunded 300 for a return", out)
        self.assertIn("CNY)", out)
        self.assertIn("refused: INSUFFICIENT_POINTS", out.replace("is refused: ", "refused: "))
        # run again: every step is answered from the ledger, nothing applied twice
        before = self.available("bob")
        self.run_example("mall_checkout.py", "mall", "--brand", "aurora", "--member", "bob",
                         "--order", "ex-1")
        self.assertEqual(self.available("bob"), before)
        out = self.run_example("partner_desk.py", "partner-borealis", "--from", "aurora", "--to",
                               "borealis", "--member", "bob", "--points", "1001", "--id", "ex-2")
        self.assertIn("exchanged 1001 aurora points of bob: 500 borealis points", out)
        self.assertRegex(out, r"aurora pays borealis \d+\.\d\d EUR")
        self.assertRegex(out, r"settlement \d+ confirmed by borealis")
        r = subprocess.run([TALLYCTL, "--json", "--key", "auditor", "settlements", "--brands",
                            "aurora,borealis"], env=self.env, capture_output=True, text=True)
        self.assertIn('"confirmed":true', r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
