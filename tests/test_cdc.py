#!/usr/bin/env python3
"""tally-cdc (the change stream) against a real TLS cluster and a real RabbitMQ broker.

While tally-bench writes, the publisher is killed (SIGKILL), then the broker, then the
cluster's leader, once each; each time the stream goes on. At the end a consumer reads
the queue and must see every entry of the journal, 1 to the last, each once and in
order (a copy published again after a crash is dropped by its sequence number), and
each line must match the auditor's copy of the journal (tally-audit pull) by leaf
hash. The JSON format is compared field by field with the protobuf entry (Google's
json_format reads it back). A cursor that names another journal's entry, a consumer
that meets a gap and a broker that refuses the login each fail with a clear message.

Skipped, with the reason, only where rabbitmq-server cannot start.
Run: python3 tests/test_cdc.py   (after make; TALLY_BUILD picks the build)
"""

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

from localcluster import BUILD, CLUSTER, ROOT, TALLYCTL, start, stop

DEBIAN_PYTHON = "/usr/bin/python3"  # with python3-protobuf (make deps)
if os.path.exists(DEBIAN_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(
        DEBIAN_PYTHON) and not os.environ.get("TALLY_CDC_REEXEC"):
    os.execve(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv, dict(os.environ, TALLY_CDC_REEXEC="1"))

CDC = os.path.join(BUILD, "tools", "tally-cdc")
AUDIT = os.path.join(BUILD, "tools", "tally-audit")
BENCH = os.path.join(BUILD, "tools", "tally-bench")
BROKER = os.path.join(ROOT, "tools", "rabbitmq-local")
# Entries the publisher must move past after each fault before the next one.
STEP = 150
# Watchdog for each wait on progress (a hang is a failure; no timing is asserted).
WAIT_S = 120


def leaf(data):
    return hashlib.sha256(b"\x00" + data).hexdigest()


def journal(audit_dir):
    """The auditor's copy of the journal: the entry bytes of seq 1, 2, ... in order."""
    out = []
    jdir = os.path.join(audit_dir, "journal")
    for name in sorted(os.listdir(jdir)):
        with open(os.path.join(jdir, name), "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):
            n = struct.unpack(">I", data[at:at + 4])[0]
            out.append(data[at + 4:at + 4 + n])
            at += 4 + n
    return out


class ChangeStream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mq = tempfile.mkdtemp(prefix="tally-cdc-mq-")
        r = subprocess.run([BROKER, "start", "--dir", cls.mq], capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run([BROKER, "stop", "--dir", cls.mq])
            shutil.rmtree(cls.mq, ignore_errors=True)
            raise unittest.SkipTest("rabbitmq-server cannot start here: " + r.stderr[-1500:])
        cls.dir = None
        try:
            cls.dir, cls.base, cls.env = start("tally-cdc-")
            with open(os.path.join(cls.mq, "env")) as f:
                k, v = f.read().strip().split("=", 1)
                cls.env[k] = v
            for i, args in enumerate([["brand", "create", "--id", "aurora"],
                                      ["member", "open", "--id", "alice"],
                                      ["accrue", "--brand", "aurora", "--member", "alice",
                                       "--points", "100"],
                                      ["accrue", "--brand", "aurora", "--member", "alice",
                                       "--points", "200"]]):
                subprocess.run([TALLYCTL, "--key", "admin"] + args + ["--request-id", "s%d" % i],
                               env=cls.env, check=True, stdout=subprocess.DEVNULL)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        subprocess.run([BROKER, "stop", "--dir", cls.mq])
        shutil.rmtree(cls.mq, ignore_errors=True)
        if cls.dir is not None:
            stop(cls.dir, cls.env)

    def path(self, name):
        return os.path.join(self.dir, name)

    def publisher(self, cursor, *args):
        with open(self.path(os.path.basename(cursor) + ".log"), "a") as log:
            return subprocess.Popen([CDC, "publish", "--cursor", cursor] + list(args),
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def finish(self, proc):
        """The exit status of a publisher run with --exit-at-end (killed if it hangs)."""
        try:
            return proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def consume(self, *args):
        return subprocess.run([CDC, "consume"] + list(args), env=self.env, capture_output=True,
                              text=True, timeout=WAIT_S)

    def cursor(self, path):
        try:
            with open(path) as f:
                return int(f.read().split()[3])
        except (OSError, IndexError):
            return 0

    def wait_cursor(self, path, at_least, proc):
        deadline = time.monotonic() + WAIT_S
        while self.cursor(path) < at_least:
            self.assertIsNone(proc.poll(), "the publisher exited: %s" % self.read_log(path))
            self.assertLess(time.monotonic(), deadline, "the cursor stays below %d: %s" % (
                at_least, self.read_log(path)))
            time.sleep(0.05)
        return self.cursor(path)

    def wait_gone(self, pid):
        deadline = time.monotonic() + WAIT_S
        while os.path.exists("/proc/%d" % pid):
            self.assertLess(time.monotonic(), deadline, "process %d does not end" % pid)
            time.sleep(0.05)

    def read_log(self, cursor):
        with open(self.path(os.path.basename(cursor) + ".log")) as f:
            return f.read()[-3000:]

    def tree_size(self):
        r = subprocess.run([TALLYCTL, "--json", "--key", "auditor", "digest"], env=self.env,
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["tree_size"]

    def leader(self):
        r = subprocess.run([TALLYCTL, "--json", "--key", "auditor", "status"], env=self.env,
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["leader"]["id"]

    def pull(self):
        d = self.path("audit")
        subprocess.run([AUDIT, "pull", "--out", d, "--key", "auditor"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        return journal(d)

    def test_a_stream_through_a_publisher_crash_a_broker_crash_and_a_leader_crash(self):
        writer = subprocess.Popen([BENCH, "--key", "admin", "--connections", "1", "--pipeline", "4",
                                   "--rate", "200", "--members", "50", "--preload", "1000",
                                   "--duration-s", "600"], env=self.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cursor = self.path("faults.cursor")
        args = ["--queue", "faults", "--window", "25", "--poll-ms", "20"]
        pub = self.publisher(cursor, *args)
        try:
            self.wait_cursor(cursor, STEP, pub)
            pub.kill()  # 1. the publisher
            pub.wait()
            pub = self.publisher(cursor, *args)
            self.wait_cursor(cursor, self.tree_size() + STEP, pub)
            subprocess.run([BROKER, "kill", "--dir", self.mq], check=True)  # 2. the broker
            subprocess.run([BROKER, "start", "--dir", self.mq], check=True)
            self.wait_cursor(cursor, self.tree_size() + STEP, pub)
            leader = self.leader()  # 3. the leader
            with open(self.path("node%d.pid" % leader)) as f:
                pid = int(f.read())
            at = self.tree_size()
            os.kill(pid, signal.SIGKILL)
            self.wait_cursor(cursor, at + STEP, pub)  # entries only a new leader wrote
            self.wait_gone(pid)
            subprocess.run([CLUSTER, "restart", "--node", str(leader), "--dir", self.dir],
                           env=self.env, check=True, stdout=subprocess.DEVNULL)
            writer.send_signal(signal.SIGINT)
            writer.wait()
            n = self.tree_size()
            self.wait_cursor(cursor, n, pub)
            pub.send_signal(signal.SIGTERM)
            self.assertEqual(pub.wait(), 0, self.read_log(cursor))
        finally:
            writer.kill()
            pub.kill()
            writer.wait()
            pub.wait()
        self.assertIn("broker", self.read_log(cursor))  # the broker's loss was seen and named

        r = self.consume("--queue", "faults", "--from-seq", "1", "--until-seq", str(n))
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout[-2000:])
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), n + 1, r.stdout[-2000:])
        self.assertRegex(lines[-1], r"^received \d+ messages, \d+ duplicates? dropped; last "
                                    r"entry %d$" % n)
        print("\n  consumer: %s\n  publisher's log:\n%s" % (lines[-1], self.read_log(cursor)),
              file=sys.stderr)
        entries = self.pull()
        self.assertGreaterEqual(len(entries), n)
        for seq, line in enumerate(lines[:-1], start=1):
            self.assertTrue(line.startswith("#%d " % seq), line)
            self.assertTrue(line.endswith(" leaf " + leaf(entries[seq - 1])[:16]), line)

    def test_json_is_the_entry_field_by_field(self):
        from google.protobuf import json_format
        sys.path.insert(0, os.path.join(BUILD, "python"))
        import tally_pb2

        subprocess.run([TALLYCTL, "--key", "admin", "brand", "create", "--id", "jsonb",
                        "--request-id", "j1"], env=self.env, check=True, stdout=subprocess.DEVNULL)
        n = self.tree_size()
        cursor = self.path("json.cursor")
        pub = self.publisher(cursor, "--exchange", "tally.json", "--queue", "json", "--format",
                             "json", "--exit-at-end")
        self.assertEqual(self.finish(pub), 0, self.read_log(cursor))
        self.assertRegex(self.read_log(cursor), r"published \d+ entries \(seq 1\.\.\d+\)")
        r = self.consume("--queue", "json", "--from-seq", "1", "--until-seq", str(n))
        self.assertEqual(r.returncode, 0, r.stderr)
        entries = self.pull()
        for seq, line in enumerate(r.stdout.splitlines()[:-1], start=1):
            head, body = line.split(" ", 1)
            self.assertEqual(head, "#%d" % seq)
            msg = json.loads(body)
            self.assertEqual((msg["seq"], msg["leaf"]), (str(seq), leaf(entries[seq - 1])))
            want = tally_pb2.Entry.FromString(entries[seq - 1])
            got = json_format.Parse(json.dumps(msg["entry"]), tally_pb2.Entry())
            self.assertEqual(got, want, line)

    def test_a_consumer_prints_each_entry_once(self):
        # The journal twice onto one queue (two cursors), then one entry more: the
        # consumer prints 1..n+1 once each and drops the n copies.
        n = self.tree_size()
        for name in ("twice-a.cursor", "twice-b.cursor"):
            pub = self.publisher(self.path(name), "--queue", "twice", "--exit-at-end")
            self.assertEqual(self.finish(pub), 0, self.read_log(self.path(name)))
        subprocess.run([TALLYCTL, "--key", "admin", "accrue", "--brand", "aurora", "--member",
                        "alice", "--points", "7", "--request-id", "t-%d" % n], env=self.env,
                       check=True, stdout=subprocess.DEVNULL)
        pub = self.publisher(self.path("twice-a.cursor"), "--queue", "twice", "--exit-at-end")
        self.assertEqual(self.finish(pub), 0)
        m = self.cursor(self.path("twice-a.cursor"))
        self.assertGreater(m, n)
        r = self.consume("--queue", "twice", "--from-seq", "1", "--until-seq", str(m))
        self.assertEqual(r.returncode, 0, r.stderr)
        printed = [l.split()[0] for l in r.stdout.splitlines()[:-1]]
        self.assertEqual(printed, ["#%d" % i for i in range(1, m + 1)])
        self.assertIn("%d duplicates dropped; last entry %d" % (
            self.cursor(self.path("twice-b.cursor")), m), r.stdout)

    def test_a_cursor_from_another_journal_is_refused(self):
        cursor = self.path("foreign.cursor")
        with open(cursor, "w") as f:
            f.write("tally-cdc v1 seq 2 leaf %s\n" % ("ab" * 32))
        pub = self.publisher(cursor, "--queue", "foreign", "--exit-at-end")
        self.assertEqual(self.finish(pub), 1)
        self.assertIn("entry 2 is not the cluster's entry 2", self.read_log(cursor))

    def test_a_consumer_fails_on_a_gap(self):
        # A publisher whose cursor starts at entry 3 (the cluster's own) publishes 4 on:
        # a consumer that expects entry 1 first meets a gap.
        entries = self.pull()
        cursor = self.path("gap.cursor")
        with open(cursor, "w") as f:
            f.write("tally-cdc v1 seq 3 leaf %s\n" % leaf(entries[2]))
        pub = self.publisher(cursor, "--queue", "gap", "--exit-at-end")
        self.assertEqual(self.finish(pub), 0, self.read_log(cursor))
        r = self.consume("--queue", "gap", "--from-seq", "1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("a gap: entry 4 came after 0", r.stderr)

    def test_a_login_the_broker_refuses_is_not_retried(self):
        with open(os.path.join(self.mq, "port")) as f:
            port = f.read().strip()
        env = dict(self.env, TALLY_CDC_BROKER="amqp://guest:wrong@127.0.0.1:%s" % port)
        r = subprocess.run([CDC, "consume", "--queue", "x"], env=env, capture_output=True,
                           text=True, timeout=WAIT_S)
        self.assertEqual(r.returncode, 1)
        self.assertIn("ACCESS_REFUSED", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
