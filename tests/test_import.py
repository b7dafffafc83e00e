#!/usr/bin/env python3
"""tallyctl import against a real TLS cluster (tools/tally-cluster, three tallyd).

A file with good and bad lines: the good ones imported as import entries, the bad ones
in FILE.rejected.csv with their reasons, exit 1; the same file again without its state
applies nothing twice; a large import killed part-way (SIGKILL) resumes after the line
its state file names, and in the end every line is in the journal exactly once.

Run: python3 tests/test_import.py   (after make; TALLY_BUILD picks another build)
"""

import json
import os
import signal
import subprocess
import time
import unittest

from localcluster import TALLYCTL, start, stop

RESUME_LINES = 30000
# How long the killed import may take to reach its first saved batch (a watchdog).
PROGRESS_WAIT_S = 120

SMALL = """member,points,expiry,segment,reference
alice,1800,2030-03-31,owner_passenger,crm-1
bob,250,,fan,crm-2
carol,12,2027-01-01T08:00:00+08:00,prospect
dave,-5,2030-01-01,fan
erin,10,2020-01-01,fan
frank,10,2030-01-01,alien
alice,200,2031-06-30,owner_passenger,crm-3
""" + "gina,1,,fan," + "x" * 2000 + "\n"


class ImportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir, cls.base, cls.env = start("tally-import-")
        try:
            cls.ctl("brand", "create", "--id", "aurora", "--currency", "CNY", "--request-id", "b1")
            cls.ctl("brand", "create", "--id", "borealis", "--request-id", "b2")
        except BaseException:
            stop(cls.dir, cls.env)
            raise

    @classmethod
    def tearDownClass(cls):
        stop(cls.dir, cls.env)

    @classmethod
    def ctl(cls, *args, rc=0):
        r = subprocess.run([TALLYCTL, "--json"] + list(args), env=cls.env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == rc, "tallyctl %s: exit %d: %s%s" % (args, r.returncode, r.stdout,
                                                                   r.stderr)
        return r.stdout

    def available(self, brand, member):
        return json.loads(self.ctl("--key", "auditor", "balance", "--brand", brand, "--member",
                                   member))["available"]

    def test_good_lines_are_imported_and_bad_ones_reported(self):
        path = os.path.join(self.dir, "small.csv")
        with open(path, "w") as f:
            f.write(SMALL)
        out = json.loads(self.ctl("import", "--brand", "aurora", path, rc=1))
        self.assertEqual((out["imported"], out["rejected"], out["lines"]), (4, 4, 9))
        with open(path + ".rejected.csv") as f:
            report = f.read().splitlines()
        self.assertEqual(report[0], "line,member,reason")
        reasons = {int(l.split(",")[0]): l for l in report[1:]}
        self.assertEqual(sorted(reasons), [5, 6, 7, 9])
        self.assertIn("points: a whole number above 0", reasons[5])
        self.assertIn("INVALID_ARGUMENT: expires_ms", reasons[6])
        self.assertIn("expired already", reasons[6])
        self.assertIn("segment: unknown 'alien'", reasons[7])
        self.assertIn("longer than 1024 bytes", reasons[9])
        self.assertEqual(self.available("aurora", "alice"), 2000)
        self.assertEqual(self.available("aurora", "bob"), 250)
        entries = json.loads(self.ctl("--key", "auditor", "entries", "--brand", "aurora"))["entries"]
        self.assertEqual(sorted(e["member"] for e in entries if e["kind"] == "import_points"),
                         ["alice", "alice", "bob", "carol"])
        # Again, without the state file: every line is answered as a replay.
        os.unlink(path + ".import")
        self.ctl("import", "--brand", "aurora", path, rc=1)
        self.assertEqual(self.available("aurora", "alice"), 2000)
        # Only an admin key imports: a dealer's lines are refused, with the reason.
        other = os.path.join(self.dir, "dealer.csv")
        with open(other, "w") as f:
            f.write("zed,5,,fan\n")
        out = json.loads(self.ctl("--key", "dealer", "import", "--brand", "aurora", other, rc=1))
        self.assertEqual((out["imported"], out["rejected"]), (0, 1))
        with open(other + ".rejected.csv") as f:
            self.assertIn("PERMISSION_DENIED", f.read())
        # A file that is not there is a usage error.
        self.ctl("import", "--brand", "aurora", os.path.join(self.dir, "nosuch.csv"), rc=2)

    def test_an_import_killed_part_way_resumes_and_applies_each_line_once(self):
        path = os.path.join(self.dir, "big.csv")
        with open(path, "w") as f:
            for i in range(RESUME_LINES):
                f.write("r%06d,%d,2030-01-01,fan\n" % (i, i + 1))
        before = json.loads(self.ctl("--key", "auditor", "digest"))["tree_size"]
        p = subprocess.Popen([TALLYCTL, "import", "--brand", "borealis", path], env=self.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + PROGRESS_WAIT_S
        while not os.path.exists(path + ".import"):
            self.assertIsNone(p.poll(), "the import ended before its first batch was saved")
            self.assertLess(time.monotonic(), deadline, "no batch saved")
            time.sleep(0.01)  # pacing the polling of the state file, not a race
        p.send_signal(signal.SIGKILL)
        p.wait()
        with open(path + ".import") as f:
            saved = int(f.read().split()[-1])
        self.assertGreater(saved, 0)
        out = json.loads(self.ctl("import", "--brand", "borealis", path))
        self.assertEqual(out["resumed_after"], saved)
        self.assertEqual(out["lines"], RESUME_LINES)
        self.assertEqual(out["rejected"], 0)
        after = json.loads(self.ctl("--key", "auditor", "digest"))["tree_size"]
        self.assertEqual(after - before, 2 * RESUME_LINES)  # a member and an import per line
        for i in (0, saved - 1, saved, RESUME_LINES - 1):
            self.assertEqual(self.available("borealis", "r%06d" % i), i + 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
