#!/usr/bin/env python3
"""/metrics of a real TLS cluster (tools/tally-cluster, three tallyd) after a load.

Checks that every node's page passes `promtool check metrics` (Debian's prometheus
package; make deps installs it) and follows the conventions on its own: a HELP and a
TYPE line for every family, counters ending in _total, histograms with cumulative
buckets ending at +Inf, _sum and _count; that the counters show the load that ran; and
that the Grafana dashboard (docs/grafana/tally.json) asks only for families the nodes
export, with PromQL that `promtool check rules` parses.

Run: python3 tests/test_metrics.py   (after make; TALLY_BUILD picks another build)
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import urllib.request

from localcluster import BUILD, ROOT, start, stop

DASHBOARD = os.path.join(ROOT, "docs", "grafana", "tally.json")
BENCH = os.path.join(BUILD, "tools", "tally-bench")
LOAD_COMMANDS = 300
BIG_BATCH = 400  # commands: ~26 KB as a raft entry, past NODE_NOTICE_ENTRY_BYTES_MIN
PROMTOOL = shutil.which("promtool")
SKIP_PROMTOOL = "promtool not installed (Debian package prometheus; make deps installs it)"


def parse(page):
    """{family: {"help": str, "type": str, "samples": [(name, labels, value)]}}; a sample
    belongs to the family its HELP/TYPE lines named last."""
    families, current = {}, None
    for line in page.splitlines():
        m = re.match(r"# (HELP|TYPE) (\S+) (.*)$", line)
        if m:
            current = families.setdefault(m.group(2), {"help": None, "type": None, "samples": []})
            current[m.group(1).lower()] = m.group(3)
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        assert m, "a line that is no sample: %r" % line
        assert current is not None, "a sample before any family: %r" % line
        current["samples"].append((m.group(1), m.group(2) or "", float(m.group(3))))
    return families


def direct_io(directory):
    """Whether the file system under directory takes O_DIRECT (tmpfs does not)."""
    path = os.path.join(directory, ".direct")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600))
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(path):
            os.unlink(path)


def value(families, name, labels=""):
    """The value of sample `name` with exactly `labels`, whichever family holds it."""
    for f in families.values():
        for sample_name, sample_labels, v in f["samples"]:
            if sample_name == name and sample_labels == labels:
                return v
    raise AssertionError("no sample %s%s" % (name, labels))


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir, cls.base, cls.env = start("tally-metrics-")
        try:
            load = subprocess.run([BENCH, "--members", "50", "--commands", str(LOAD_COMMANDS),
                                   "--connections", "1", "--pipeline", "8", "--json"],
                                  env=cls.env, capture_output=True, text=True, timeout=300)
            assert load.returncode == 0, load.stderr
            # and requests of 400 commands: raft entries large enough for the leader to
            # tell its followers of their commit before it applies them (notice.c)
            load = subprocess.run([BENCH, "--no-setup", "--members", "50", "--commands",
                                   str(2 * BIG_BATCH), "--batch", str(BIG_BATCH),
                                   "--connections", "1", "--pipeline", "1", "--json"],
                                  env=cls.env, capture_output=True, text=True, timeout=300)
            assert load.returncode == 0, load.stderr
            cls.pages = []
            for i in (1, 2, 3):
                url = "http://127.0.0.1:%d/metrics" % (cls.base + 200 + i)
                with urllib.request.urlopen(url, timeout=30) as r:
                    cls.pages.append(r.read().decode())
        except BaseException:
            stop(cls.dir, cls.env)
            raise

    @classmethod
    def tearDownClass(cls):
        stop(cls.dir, cls.env)

    @unittest.skipIf(PROMTOOL is None, SKIP_PROMTOOL)
    def test_promtool_finds_nothing_to_say(self):
        for i, page in enumerate(self.pages, 1):
            r = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, "node %d: %s%s" % (i, r.stdout, r.stderr))
            self.assertEqual(r.stdout + r.stderr, "", "node %d" % i)

    def test_every_family_is_described_and_named_by_convention(self):
        for i, page in enumerate(self.pages, 1):
            for name, f in parse(page).items():
                where = "node %d, %s" % (i, name)
                self.assertTrue(name.startswith("tally_"), where)
                self.assertTrue(f["help"], where + ": no HELP")
                self.assertIn(f["type"], ("counter", "gauge", "histogram"), where)
                self.assertEqual(f["type"] == "counter", name.endswith("_total"), where)
                if f["type"] == "histogram":
                    self.check_histogram(name, f["samples"], where)
                else:
                    self.assertTrue(all(s[0] == name for s in f["samples"]), where)

    def check_histogram(self, name, samples, where):
        buckets = [(s[1], s[2]) for s in samples if s[0] == name + "_bucket"]
        self.assertEqual(buckets[-1][0], '{le="+Inf"}', where)
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts), where + ": buckets not cumulative")
        bounds = [float(l[5:-2]) for l, _ in buckets[:-1]]
        self.assertEqual(bounds, sorted(bounds), where)
        self.assertEqual([s[2] for s in samples if s[0] == name + "_count"], [counts[-1]], where)
        sums = [s[2] for s in samples if s[0] == name + "_sum"]
        self.assertEqual(len(sums), 1, where)
        self.assertGreaterEqual(sums[0], 0, where)

    def test_the_load_shows(self):
        leaders = []
        for i, page in enumerate(self.pages, 1):
            f = parse(page)
            where = "node %d" % i
            # every replica applied the setup and the load
            self.assertGreaterEqual(value(f, "tally_commands_total"), LOAD_COMMANDS, where)
            self.assertEqual(value(f, "tally_batch_commands_sum"),
                             value(f, "tally_commands_total"), where)
            self.assertEqual(value(f, "tally_apply_seconds_count"),
                             value(f, "tally_raft_commits_total"), where)
            self.assertGreater(value(f, "tally_apply_seconds_sum"), 0, where)
            if value(f, "tally_raft_leader") == 1:
                leaders.append(f)
        self.assertEqual(len(leaders), 1)
        f = leaders[0]
        self.assertEqual(value(f, "tally_raft_state", '{state="leader"}'), 1)
        self.assertGreater(value(f, "tally_commit_seconds_count"), 0)
        self.assertGreater(value(f, "tally_commit_seconds_sum"), 0)
        # each command or batch request the leader answered has its time in the node
        self.assertGreater(value(f, "tally_request_seconds_count"), 0)
        self.assertLessEqual(value(f, "tally_request_seconds_count"),
                             value(f, "tally_requests_total"))
        self.assertGreater(value(f, "tally_request_seconds_sum"), 0)
        # the ledgers' maps grew where they are: no growth waited for a snapshot's
        # reader (ledger/remap.c)
        for g in map(parse, self.pages):
            self.assertEqual(value(g, "tally_ledger_map_waits_total"), 0)
        self.assertGreaterEqual(value(f, "tally_requests_total"), LOAD_COMMANDS)
        self.assertGreaterEqual(value(f, "tally_results_total", '{code="OK"}'), 1)
        # the leader told its followers of commits before applying them (notice.c)
        self.assertGreater(value(f, "tally_commit_notices_total"), 0)
        for g in map(parse, self.pages):
            if value(g, "tally_raft_leader") != 1:
                self.assertEqual(value(g, "tally_commit_notices_total"), 0)
        # the leader answered every command of the load with its outcome: none was
        # left unknown (TIMEOUT)
        timeouts = [v for fam in f.values() for name, labels, v in fam["samples"]
                    if name == "tally_results_total" and labels == '{code="TIMEOUT"}']
        self.assertEqual(sum(timeouts), 0)
        # followers apply the load's large entries on a thread of their own
        # (applier.c), the leader all of them on its loop
        self.assertEqual(value(f, "tally_entries_applied_off_loop_total"), 0)
        for g in map(parse, self.pages):
            if value(g, "tally_raft_leader") != 1:
                self.assertGreater(value(g, "tally_entries_applied_off_loop_total"), 0)
                self.assertLessEqual(value(g, "tally_entries_applied_off_loop_total"),
                                     value(g, "tally_raft_commits_total"))

    def test_every_node_writes_its_log_segments(self):
        # raft's segments are written with zeros when made (consensus/logfill.c), where
        # the file system takes O_DIRECT
        if not direct_io(self.dir):
            self.skipTest("no O_DIRECT under %s: segments are only allocated there" % self.dir)
        for i, page in enumerate(self.pages, 1):
            self.assertGreaterEqual(value(parse(page), "tally_log_segments_filled_total"), 1,
                                    "node %d" % i)

    def test_every_node_destroys_raft_aio_contexts_off_its_loop(self):
        # raft_uv probes the kernel's AIO with a context of its own at start, where the
        # file system takes O_DIRECT, and destroys it: through the reaper (aioreap.c)
        if not direct_io(self.dir):
            self.skipTest("no O_DIRECT under %s: raft_uv probes no AIO there" % self.dir)
        for i, page in enumerate(self.pages, 1):
            self.assertGreaterEqual(value(parse(page), "tally_aio_contexts_reaped_total"), 1,
                                    "node %d" % i)

    def dashboard_exprs(self):
        with open(DASHBOARD) as fh:
            dash = json.load(fh)
        self.assertTrue(dash["panels"])
        exprs = []
        for p in dash["panels"]:
            self.assertTrue(p.get("title") and p.get("description"), p.get("title"))
            self.assertTrue(p["targets"], p["title"])
            exprs += [(p["title"], t["expr"]) for t in p["targets"]]
        return exprs

    def test_the_dashboard_asks_only_for_exported_families(self):
        exported = set(parse(self.pages[0]))
        for title, expr in self.dashboard_exprs():
            for name in re.findall(r"\btally_[a-z_]+", expr):
                family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in exported else name
                self.assertIn(family, exported, "panel %r asks for %s" % (title, name))

    @unittest.skipIf(PROMTOOL is None, SKIP_PROMTOOL)
    def test_the_dashboard_promql_parses(self):
        # Grafana's variables as Prometheus would see them once Grafana filled them in.
        rules = ["    - record: tally:panel_%d\n      expr: %s\n" %
                 (i, json.dumps(e.replace("$__rate_interval", "1m").replace("$instance", ".*")))
                 for i, (_, e) in enumerate(self.dashboard_exprs())]
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as fh:
            fh.write("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
        try:
            r = subprocess.run([PROMTOOL, "check", "rules", fh.name], capture_output=True,
                               text=True, timeout=60)
        finally:
            os.unlink(fh.name)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
