#!/usr/bin/env python3
"""The auditor's kit against a real TLS cluster (tools/tally-cluster, three tallyd).

An auditor pulls the journal with tally-audit, a leader is killed, a follower comes
back by installing a snapshot, the auditor pulls again from that follower (only what
is new) and verifies everything against the nodes' signed checkpoints. Then each kind
of tampering with the pulled directory must be caught, and named, by verify.

Run: python3 tests/test_audit.py   (after make; TALLY_BUILD picks another build)
"""

import datetime
import glob
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
import unittest

from localcluster import BUILD, CLUSTER, ROOT, TALLYCTL, start, stop

AUDIT = os.path.join(BUILD, "tools", "tally-audit")
BENCH = os.path.join(BUILD, "tools", "tally-bench")
# The independent verifier runs on Debian's python3 (python3-protobuf, -cryptography).
PY_VERIFY = os.path.join(ROOT, "clients", "python", "tally_verify.py")
DEBIAN_PYTHON = "/usr/bin/python3"
# How long a restarted node may take to catch up (a hang is a failure).
CATCH_UP_S = 60


def records(path):
    """A journal file's records (each: 4-byte big-endian length, then the bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    out, at = [], 0
    while at < len(data):
        n = struct.unpack(">I", data[at:at + 4])[0]
        out.append(data[at:at + 4 + n])
        at += 4 + n
    return out


def read_text(path):
    with open(path) as f:
        return f.read()


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_records(path, recs):
    with open(path, "wb") as f:
        f.write(b"".join(recs))


class AuditorsKit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Small snapshots, few entries kept after them: a node that misses a few
        # hundred entries comes back by installing a snapshot.
        args = ["--partners", "beta",
                "--tallyd-arg", "--snapshot-threshold", "--tallyd-arg", "64",
                "--tallyd-arg", "--snapshot-trailing", "--tallyd-arg", "16"]
        cls.dir, cls.base, cls.env = start("tally-audit-", args)
        cls.keys = os.path.join(cls.dir, "checkpoint-keys")
        cls.audit_dir = os.path.join(cls.dir, "audit")
        cls.story()
        cls.bench(1)
        rc, out, err = cls.audit(["pull", "--out", cls.audit_dir, "--json"])
        assert rc == 0, err
        cls.first_pull = json.loads(out)

    @classmethod
    def tearDownClass(cls):
        stop(cls.dir, cls.env)

    @classmethod
    def ctl(cls, key, args, cluster=None):
        env = dict(cls.env)
        if cluster:
            env["TALLY_CLUSTER"] = cluster
        p = subprocess.run([TALLYCTL, "--json", "--key", key] + args, env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0, "tallyctl %s: exit %d: %s" % (" ".join(args), p.returncode,
                                                                 p.stdout + p.stderr)
        return json.loads(p.stdout.strip().splitlines()[-1])

    @classmethod
    def audit(cls, args, cluster=None):
        env = dict(cls.env)
        if cluster:
            env["TALLY_CLUSTER"] = cluster
        p = subprocess.run([AUDIT] + args, env=env, capture_output=True, text=True)
        return p.returncode, p.stdout, p.stderr

    @classmethod
    def story(cls):
        """Two brands, an exchange agreement, members, the mall and a partner."""
        cls.ctl("admin", ["brand", "create", "--id", "acme", "--name", "Acme",
                          "--point-value-micros", "5000", "--currency", "CNY"])
        cls.ctl("admin", ["brand", "create", "--id", "beta", "--name", "Beta"])
        cls.ctl("admin", ["agreement", "set", "--from", "acme", "--to", "beta", "--rate", "1/2",
                          "--min", "10", "--daily-cap", "100000", "--price-micros", "4000"])
        for m, segment in (("ann", "owner_passenger"), ("bo", "fan"), ("cy", "prospect")):
            cls.ctl("admin", ["member", "open", "--id", m, "--segment", segment])
            cls.ctl("dealer", ["accrue", "--brand", "acme", "--member", m, "--points", "1000"])
        hold = cls.ctl("mall", ["hold", "--brand", "acme", "--member", "ann", "--points", "300",
                                "--timeout-s", "3600"])["hold_id"]
        cls.ctl("mall", ["capture", "--hold", str(hold), "--points", "200"])
        cls.ctl("mall", ["transfer", "--brand", "acme", "--from", "bo", "--to", "cy",
                         "--points", "100"])
        cls.ctl("partner-beta", ["exchange", "--from", "acme", "--to", "beta", "--member", "cy",
                                 "--points", "500"])
        last = cls.ctl("partner-beta", ["exchange", "--from", "acme", "--to", "beta",
                                        "--member", "ann", "--points", "300"])
        # The cut-off is the last exchange's own ledger time, not this process's clock:
        # ledger time is the cluster's clock, which may run a few ms ahead of it.
        until = cls.ctl("auditor", ["entry", "--seq", str(last["entry_seq"])])["time_ms"]
        time.sleep(0.01)  # the cut-off lies strictly before the settling batch's time
        cls.settlement = cls.ctl("partner-beta", ["settle", "--brands", "acme,beta", "--until",
                                                  str(until)])["settlement_id"]
        cls.ctl("partner-beta", ["settlement", "confirm", "--id", str(cls.settlement)])

    @classmethod
    def bench(cls, seconds, cluster=None):
        env = dict(cls.env)
        if cluster:
            env["TALLY_CLUSTER"] = cluster
        subprocess.run([BENCH, "--duration-s", str(seconds), "--members", "300",
                        "--connections", "2", "--pipeline", "8"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, i):
        return "127.0.0.1:%d" % (self.base + 100 + i)

    def log(self, i):
        with open(os.path.join(self.dir, "node%d.log" % i)) as f:
            return f.read()

    def verify(self, d, keys=None):
        return self.audit(["verify", d, "--keys", keys or self.keys, "--json"])

    # ---- pulling across faults ---------------------------------------------------------

    def test_a_second_pull_after_a_leader_kill_and_a_snapshot_install(self):
        leader = self.ctl("auditor", ["status"])["leader"]["id"]
        others = [i for i in (1, 2, 3) if i != leader]
        behind = self.ctl("auditor", ["digest", "--stale"],
                          cluster=self.client(leader))["applied_index"]
        with open(os.path.join(self.dir, "node%d.pid" % leader)) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        survivors = ",".join(self.client(i) for i in others)
        deadline = time.monotonic() + CATCH_UP_S
        while self.ctl("auditor", ["status"], cluster=survivors)["leader"]["id"] in (0, leader):
            self.assertLess(time.monotonic(), deadline, "no new leader")
            time.sleep(0.1)
        self.bench(2, cluster=survivors)
        log_before = len(self.log(leader))
        subprocess.run([CLUSTER, "restart", "--dir", self.dir, "--node", str(leader)],
                       check=True, env=self.env, stdout=subprocess.DEVNULL)
        want = self.ctl("auditor", ["digest"])
        deadline = time.monotonic() + CATCH_UP_S
        while True:
            try:
                got = self.ctl("auditor", ["digest", "--stale"], cluster=self.client(leader))
            except AssertionError:
                got = {"tree_size": 0}  # not answering yet
            if got["tree_size"] >= want["tree_size"]:
                break
            self.assertLess(time.monotonic(), deadline, "node %d did not catch up" % leader)
            time.sleep(0.1)
        installed = [int(x) for x in re.findall(r"ledger restored from a raft snapshot: "
                                                r"applied index (\d+)",
                                                self.log(leader)[log_before:])]
        self.assertTrue(installed and max(installed) > behind,
                        "node %d did not come back by a snapshot: %s" % (leader, installed))

        # The second pull reads from the node that installed the snapshot, and only
        # what the first did not fetch.
        rc, out, err = self.audit(["pull", "--out", self.audit_dir, "--stale", "--json"],
                                  cluster=self.client(leader))
        self.assertEqual(rc, 0, err)
        second = json.loads(out)
        self.assertEqual(second["node_id"], leader)
        self.assertEqual(second["fetched"], second["tree_size"] - self.first_pull["tree_size"])
        self.assertGreater(second["fetched"], 0)
        rc, out, err = self.verify(self.audit_dir)
        self.assertEqual(rc, 0, err)
        report = json.loads(out)
        self.assertEqual(report["entries"], second["tree_size"])
        self.assertEqual(report["checkpoints"], 2)
        # replay rebuilds the ledger from the journal alone, to the signed root and state
        rc, out, err = self.audit(["replay", self.audit_dir, "--out",
                                   os.path.join(self.dir, "replayed"), "--json"])
        self.assertEqual(rc, 0, err)
        replayed = json.loads(out)
        self.assertEqual(replayed["entries"], second["tree_size"])
        self.assertEqual(replayed["checkpoints"], 2)
        self.assertEqual(replayed["root"], report["root"])
        acme = [b for b in report["brands"] if b["brand"] == "acme"][0]
        self.assertEqual(acme["point_value_micros"], 5000)
        self.assertEqual(acme["exchanged"], 800)

        # A whole pull from another node is byte for byte the same journal.
        again = os.path.join(self.dir, "audit-again")
        rc, out, err = self.audit(["pull", "--out", again, "--stale", "--json"],
                                  cluster=self.client(others[0]))
        self.assertEqual(rc, 0, err)
        n = min(json.loads(out)["tree_size"], second["tree_size"])
        mine = b"".join(r for f in sorted(glob.glob(self.audit_dir + "/journal/*"))
                        for r in records(f))
        theirs = b"".join(r for f in sorted(glob.glob(again + "/journal/*")) for r in records(f))
        self.assertGreater(n, 0)
        self.assertEqual(mine[:len(theirs)], theirs[:len(mine)])

    # ---- the independent verifier (clients/python) ----------------------------------

    def py_verify(self, d):
        pb = os.path.join(BUILD, "python")
        probe = subprocess.run([DEBIAN_PYTHON, "-c", "import google.protobuf, cryptography"],
                               capture_output=True)
        if probe.returncode != 0 or not os.path.exists(os.path.join(pb, "tally_pb2.py")):
            self.skipTest("%s lacks python3-protobuf or python3-cryptography, or %s/tally_pb2.py "
                          "is not built (make deps && make)" % (DEBIAN_PYTHON, pb))
        p = subprocess.run([DEBIAN_PYTHON, PY_VERIFY, d, "--keys", self.keys],
                           env=dict(self.env, PYTHONPATH=pb), capture_output=True, text=True)
        return p.returncode, p.stdout, p.stderr

    def test_the_python_verifier_agrees_and_catches_what_verify_catches(self):
        rc, out, err = self.py_verify(self.audit_dir)
        self.assertEqual(rc, 0, err)
        mine = json.loads(out)
        rc, out, err = self.verify(self.audit_dir)
        self.assertEqual(rc, 0, err)
        theirs = json.loads(out)
        self.assertEqual((mine["entries"], mine["root"]), (theirs["entries"], theirs["root"]))
        d = self.tampered("py-drop")
        f = self.journal_file(d)
        recs = records(f)
        del recs[4]
        write_records(f, recs)
        rc, _, err = self.py_verify(d)
        self.assertEqual(rc, 1)
        self.assertIn("entry 5 of the journal says it is entry 6", err)
        d = self.tampered("py-signature")
        c = self.checkpoint(d)
        text = read_text(c)
        sig = json.loads(text)["signature"]
        write_text(c, text.replace(sig, sig[:-1] + ("0" if sig[-1] != "0" else "1")))
        rc, _, err = self.py_verify(d)
        self.assertEqual(rc, 1)
        self.assertIn("the signature does not verify", err)

    # ---- the layering report -----------------------------------------------------------

    def layering(self, *args):
        rc, out, err = self.audit(["layering", self.audit_dir, "--brand", "acme", "--csv"] +
                                  list(args))
        self.assertEqual(rc, 0, err)
        rows = [l.split(",") for l in out.strip().splitlines()[1:]]
        self.assertEqual(len(rows), 6 * 4 * 3)  # every cell, empty ones too
        return {(r[2], r[3], r[4]): (int(r[5]), int(r[6]), int(r[7])) for r in rows if r[5] != "0"}, rows[0][1]

    def test_layering_by_segment_maturity_and_activity(self):
        now, at = self.layering()
        # every acme member joined and earned within the last day of the journal
        self.assertEqual(set(now), {("owner_passenger", "new", "active"), ("fan", "new", "active"),
                                    ("prospect", "new", "active")})
        self.assertEqual(now[("owner_passenger", "new", "active")][2], 1000)  # ann earned 1000
        t = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ")

        def later(days):
            return (t + datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.assertEqual({k[1:] for k in self.layering("--at", later(45))[0]},
                         {("new", "occasional")})
        self.assertEqual({k[1:] for k in self.layering("--at", later(100))[0]},
                         {("growing", "dormant")})
        self.assertEqual({k[1:] for k in self.layering("--at", later(200))[0]},
                         {("lapsing", "dormant")})
        self.assertEqual({k[1:] for k in self.layering("--at", later(400), "--lapse-days",
                                                       "500")[0]}, {("mature", "dormant")})
        png = os.path.join(self.dir, "layering.png")
        rc, _, err = self.audit(["layering", self.audit_dir, "--brand", "acme", "--png", png])
        self.assertEqual(rc, 0, err)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    # ---- settlement statements --------------------------------------------------------

    def statement(self):
        rc, out, err = self.audit(["statement", self.audit_dir, "--settlement",
                                   str(self.settlement), "--json"])
        self.assertEqual(rc, 0, err)
        path = os.path.join(self.dir, "statement-%d.json" % self.settlement)
        write_text(path, out)
        return path, out

    def check_statement(self, path):
        return self.audit(["check-statement", path, "--checkpoint", self.checkpoint(self.audit_dir),
                           "--keys", self.keys])

    def test_a_statement_checks_against_a_signed_checkpoint(self):
        path, text = self.statement()
        st = json.loads(text)
        self.assertEqual(st["count"], 2)
        self.assertEqual([l["member"] for l in st["lines"]], ["cy", "ann"])
        # 500 and 300 acme points at 1/2 are 250 and 150 beta points at 4000 micros each
        self.assertEqual([l["amount_micros"] for l in st["lines"]], [1000000, 600000])
        self.assertEqual((st["gross_a_to_b_micros"], st["net_micros"], st["payer"], st["payee"]),
                         (1600000, 1600000, "acme", "beta"))
        self.assertGreater(st["confirmed_seq"], st["settlement"])
        rc, out, err = self.check_statement(path)
        self.assertEqual(rc, 0, err)
        rc, out, err = self.audit(["statement", self.audit_dir, "--settlement",
                                   str(self.settlement), "--csv"])
        self.assertEqual(rc, 0, err)
        self.assertIn(",cy,acme,beta,500,250,4000,1000000,1.00 ", out)

    def test_a_statement_line_changed(self):
        path, text = self.statement()
        write_text(path, text.replace('"amount_micros": 600000', '"amount_micros": 700000', 1))
        rc, _, err = self.check_statement(path)
        self.assertEqual(rc, 1)
        self.assertIn("line 2 (entry", err)
        self.assertIn("its amount is not what the ledger's entries make", err)

    def test_a_statement_line_dropped_or_its_evidence_changed(self):
        path, text = self.statement()
        lines = text.splitlines()
        write_text(path, "\n".join(l for l in lines if '"member": "ann"' not in l))
        rc, _, err = self.check_statement(path)
        self.assertEqual(rc, 1)
        self.assertIn("counts 2 obligations and lists 1", err)
        st = json.loads(text)
        seq = st["lines"][0]["seq"]
        ev = [e for e in st["evidence"] if e["seq"] == seq][0]["entry"]
        forged = ev[:-2] + ("00" if ev[-2:] != "00" else "01")
        write_text(path, text.replace(ev, forged))
        rc, _, err = self.check_statement(path)
        self.assertEqual(rc, 1)
        self.assertIn("entry %d: not in the tree of the checkpoint" % seq, err)

    # ---- tampering ---------------------------------------------------------------------

    def tampered(self, name):
        d = os.path.join(self.dir, "tampered-" + name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.audit_dir, d)
        return d

    def journal_file(self, d):
        return sorted(glob.glob(d + "/journal/*.journal"))[0]

    def checkpoint(self, d):
        files = sorted(glob.glob(d + "/checkpoints/*.json"),
                       key=lambda p: int(os.path.basename(p).split(".")[0]))
        return files[-1]

    def assert_caught(self, d, *phrases, keys=None):
        rc, out, err = self.verify(d, keys)
        self.assertEqual(rc, 1, "verify passed a tampered directory: %s" % out)
        self.assertTrue(any(p in err for p in phrases), err)
        return err

    def test_the_untouched_pull_verifies(self):
        rc, out, err = self.verify(self.audit_dir)
        self.assertEqual(rc, 0, err)
        self.assertTrue(json.loads(out)["verified"])

    def test_one_byte_of_an_entry(self):
        d = self.tampered("byte")
        f = self.journal_file(d)
        recs = records(f)
        r = bytearray(recs[9])
        r[-1] ^= 0x01  # the last byte of entry 10
        recs[9] = bytes(r)
        write_records(f, recs)
        err = self.assert_caught(d, "entry 10:", "root at")
        m = re.search(r"in (\d+)\.\.(\d+)", err)
        if m:  # the bytes still decode: the root names the range holding entry 10
            self.assertLessEqual(int(m.group(1)), 10)
            self.assertGreaterEqual(int(m.group(2)), 10)

    def test_a_dropped_entry(self):
        d = self.tampered("drop")
        f = self.journal_file(d)
        recs = records(f)
        del recs[4]
        write_records(f, recs)
        self.assert_caught(d, "entry 5 of the journal says it is entry 6")

    def test_two_swapped_entries(self):
        d = self.tampered("swap")
        f = self.journal_file(d)
        recs = records(f)
        recs[6], recs[7] = recs[7], recs[6]
        write_records(f, recs)
        self.assert_caught(d, "entry 7 of the journal says it is entry 8")

    def test_a_checkpoints_root(self):
        d = self.tampered("root")
        c = self.checkpoint(d)
        text = read_text(c)
        root = json.loads(text)["root"]
        write_text(c, text.replace(root, ("0" if root[0] != "0" else "1") + root[1:]))
        self.assert_caught(d, "signature does not verify")

    def test_a_signature(self):
        d = self.tampered("signature")
        c = self.checkpoint(d)
        text = read_text(c)
        sig = json.loads(text)["signature"]
        write_text(c, text.replace(sig, sig[:-1] + ("0" if sig[-1] != "0" else "1")))
        self.assert_caught(d, "signature does not verify")

    def test_a_key_that_is_not_pinned(self):
        other = os.path.join(self.dir, "other-keys")
        with open(self.keys) as f:
            lines = f.read().splitlines()
        with open(other, "w") as f:  # each node's key replaced by another node's
            for i, line in enumerate(lines):
                f.write(line.split()[0] + " " + lines[(i + 1) % len(lines)].split()[1] + "\n")
        self.assert_caught(self.audit_dir, "is not the pinned one", keys=other)

    def test_a_history_forked_between_two_checkpoints(self):
        """A checkpoint signed with a node's real key (a node that lies, or its stolen
        key) over a root of another history: both checkpoints verify alone, the
        consistency proof between them does not."""
        d = self.tampered("fork")
        # a second checkpoint, after a few more entries
        self.bench(1)
        rc, _, err = self.audit(["pull", "--out", d])
        self.assertEqual(rc, 0, err)
        c = self.checkpoint(d)
        cp = json.loads(read_text(c))
        self.assertIn("consistency_from", cp)
        forged_root = ("f" if cp["root"][0] != "f" else "e") + cp["root"][1:]
        text = ("tally-checkpoint v1\nnode %d\ntree_size %d\nroot %s\nstate_digest %s\n"
                "applied_index %d\ntime_ms %d\n" % (cp["node_id"], cp["tree_size"], forged_root,
                                                    cp["state_digest"], cp["applied_index"],
                                                    cp["time_ms"]))
        key = os.path.join(self.dir, "node%d" % cp["node_id"], "checkpoint.key")
        msg = os.path.join(self.dir, "forged.txt")
        write_text(msg, text)
        sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", msg],
                             check=True, capture_output=True).stdout
        write_text(c, read_text(c).replace(cp["root"], forged_root)
                   .replace(cp["signature"], sig.hex()))
        self.assert_caught(d, "the two are of different histories")

    def test_a_torn_pull_is_caught_and_the_next_pull_repairs_it(self):
        d = self.tampered("torn")
        f = sorted(glob.glob(d + "/journal/*.journal"))[-1]
        last = records(f)[-1]
        with open(f, "rb+") as j:  # half the last record
            j.truncate(os.path.getsize(f) - len(last) // 2)
        self.assert_caught(d, "a torn or malformed record")
        rc, out, err = self.audit(["pull", "--out", d, "--json"])
        self.assertEqual(rc, 0, err)
        self.assertGreaterEqual(json.loads(out)["fetched"], 1)  # the torn entry again
        rc, _, err = self.verify(d)
        self.assertEqual(rc, 0, err)

    def test_replay_names_a_state_that_is_not_the_signed_one(self):
        d = self.tampered("replay")
        c = self.checkpoint(d)
        text = read_text(c)
        digest = json.loads(text)["state_digest"]
        write_text(c, text.replace(digest, ("0" if digest[0] != "0" else "1") + digest[1:]))
        rc, _, err = self.audit(["replay", d, "--out", os.path.join(d, "ledger")])
        self.assertEqual(rc, 1)
        self.assertIn("is not %s's: its state digest differs" % os.path.relpath(c, d), err)

    def test_a_checkpoint_beyond_the_journal(self):
        d = self.tampered("short")
        f = sorted(glob.glob(d + "/journal/*.journal"))[-1]
        recs = records(f)
        write_records(f, recs[:-3])
        self.assert_caught(d, "entries; the journal holds")


if __name__ == "__main__":
    unittest.main()
