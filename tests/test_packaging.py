#!/usr/bin/env python3
"""Tally as a service: `make install` into a scratch prefix, then what was installed.

Checks that the programs, the systemd unit (with its hardening), the tally user
(sysusers.d) and the sample configuration land where they belong; that systemd
accepts the unit (`systemd-analyze verify`, skipped where it is missing); that
`tallyd --help` describes every flag it takes and `tallyctl COMMAND --help` answers
for every command; and that the sample configuration, pointed at a scratch directory
and ports, runs a one-node cluster whose every log line is a JSON object
(`log-format = json`) and which stops cleanly on SIGTERM.

Run: python3 tests/test_packaging.py   (after make; TALLY_BUILD picks the build)
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

from localcluster import BUILD, ROOT

HARDENING = ["User=tally", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
             "PrivateTmp=yes", "PrivateDevices=yes", "CapabilityBoundingSet=",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
             "MemoryDenyWriteExecute=yes"]
# What only tallyd's unit has.
TALLYD_UNIT = ["StateDirectory=tally", "ExecReload=/bin/kill -HUP $MAINPID"]
PROGRAMS = ["tallyd", "tallyctl", "tally-certs", "tally-check", "tally-audit", "tally-cdc"]
# The node must come up within this (a watchdog for a hung start, not a timing check).
START_WAIT_S = 60
SKIP_SYSTEMD = "systemd-analyze not installed (Debian package systemd)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PackagingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="tally-install-")
        cls.prefix = os.path.join(cls.root, "usr")
        cls.etc = os.path.join(cls.root, "etc")
        args = ["make", "-s", "install", "PREFIX=" + cls.prefix, "SYSCONFDIR=" + cls.etc,
                "BUILD=" + os.path.relpath(BUILD, ROOT)]
        if os.path.basename(BUILD) == "san":
            args.append("SANITIZE=1")
        subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        cls.bin = os.path.join(cls.prefix, "bin")
        cls.unit = os.path.join(cls.prefix, "lib", "systemd", "system", "tallyd.service")
        cls.cdc_unit = os.path.join(cls.prefix, "lib", "systemd", "system", "tally-cdc.service")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_install_puts_programs_unit_user_and_config_in_place(self):
        for p in PROGRAMS:
            path = os.path.join(self.bin, p)
            self.assertTrue(os.access(path, os.X_OK), path)
        with open(self.unit) as f:
            unit = f.read()
        for line in HARDENING + TALLYD_UNIT:
            self.assertIn("\n" + line + "\n", unit)
        self.assertIn("\nExecStart=%s/tallyd --config %s/tally/tallyd.conf\n" % (self.bin, self.etc),
                      unit)
        with open(self.cdc_unit) as f:
            cdc = f.read()
        for line in HARDENING:
            self.assertIn("\n" + line + "\n", cdc)
        self.assertIn("\nStateDirectory=tally-cdc\n", cdc)
        self.assertIn("\nExecStart=%s/tally-cdc publish --cursor ${STATE_DIRECTORY}/cursor "
                      "$TALLY_CDC_ARGS\n" % self.bin, cdc)
        self.assertIn("\nEnvironmentFile=%s/tally/tally-cdc.env\n" % self.etc, cdc)
        self.assertTrue(os.path.isfile(os.path.join(self.etc, "tally", "tally-cdc.env.example")))
        with open(os.path.join(self.prefix, "lib", "sysusers.d", "tally.conf")) as f:
            self.assertRegex(f.read(), r"(?m)^u tally - ")
        self.assertTrue(os.path.isfile(os.path.join(self.etc, "tally", "tallyd.conf.example")))
        py = os.path.join(self.prefix, "lib", "python3", "dist-packages")
        for f in ("tally/__init__.py", "tally_pb2.py"):
            self.assertTrue(os.path.isfile(os.path.join(py, f)), f)
        for h in ("rpc/tally.h", "rpc/units.h"):
            self.assertTrue(os.path.isfile(os.path.join(self.prefix, "include", "tally", h)), h)

    @unittest.skipIf(shutil.which("systemd-analyze") is None, SKIP_SYSTEMD)
    def test_systemd_accepts_the_units(self):
        for unit in (self.unit, self.cdc_unit):
            r = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, unit + ": " + r.stdout + r.stderr)

    def help_of(self, *args):
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def flags_described(self, program, *bad_usage):
        """The flags program's --help names in its usage (the part before the first
        blank line), each described on a line of its own below; a usage error exits 2."""
        text = self.help_of(os.path.join(self.bin, program), "--help")
        usage, body = text.split("\n\n", 1)
        flags = set(re.findall(r"--([a-z-]+)", usage))
        self.assertGreater(len(flags), 15)
        for flag in flags:
            self.assertRegex(body, r"(?m)^  --%s\b" % flag, "--%s is not described" % flag)
        r = subprocess.run([os.path.join(self.bin, program)] + list(bad_usage), capture_output=True)
        self.assertEqual(r.returncode, 2)
        return flags

    def test_tallyd_help_describes_every_flag(self):
        flags = self.flags_described("tallyd", "--no-such-flag")
        with open(os.path.join(self.etc, "tally", "tallyd.conf.example")) as f:
            names = re.findall(r"(?m)^([a-z-]+) = ", f.read())
        for name in names:
            self.assertIn(name, flags, "the sample config's %s is no flag" % name)

    def test_tally_cdc_help_describes_every_flag(self):
        self.flags_described("tally-cdc", "publish", "--no-such-flag")

    def test_tallyctl_help_answers_for_every_command(self):
        text = self.help_of(os.path.join(self.bin, "tallyctl"), "--help")
        words = re.findall(r"(?m)^  ([a-z]+)\b", text)
        self.assertGreater(len(words), 20)
        for w in words:
            one = self.help_of(os.path.join(self.bin, "tallyctl"), w, "--help")
            self.assertTrue(one.startswith("usage: tallyctl [global flags] %s" % w), one)
        r = subprocess.run([os.path.join(self.bin, "tallyctl"), "nosuch", "--help"], capture_output=True)
        self.assertEqual(r.returncode, 2)

    def sample_config_for(self, d, raft, client, http):
        """The sample configuration with this machine's scratch values in place."""
        with open(os.path.join(self.etc, "tally", "tallyd.conf.example")) as f:
            text = f.read()
        values = {"dir": os.path.join(d, "data"), "raft": "127.0.0.1:%d" % raft,
                  "client": "127.0.0.1:%d" % client, "http": "127.0.0.1:%d" % http,
                  "keys": os.path.join(d, "keys.conf"), "certs": os.path.join(d, "certs"),
                  "bootstrap": "1=127.0.0.1:%d|127.0.0.1:%d" % (raft, client)}
        for name, v in values.items():
            text, n = re.subn(r"(?m)^%s = .*$" % name, "%s = %s" % (name, v), text)
            self.assertEqual(n, 1, name)
        self.assertRegex(text, r"(?m)^log-format = json$")
        return text

    def test_the_sample_config_runs_a_node_with_json_logs(self):
        d = tempfile.mkdtemp(prefix="tally-service-")
        try:
            self.run_node_from_sample(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def run_node_from_sample(self, d):
        raft, client, http = free_port(), free_port(), free_port()
        subprocess.run([os.path.join(self.bin, "tally-certs"), "init", "--dir", os.path.join(d, "certs"),
                        "--nodes", "1"], check=True, stdout=subprocess.DEVNULL)
        line = "admin admin * " + os.urandom(24).hex()
        for path in (os.path.join(d, "keys.conf"), os.path.join(d, "admin.key")):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, (line + "\n").encode())
            os.close(fd)
        conf = os.path.join(d, "tallyd.conf")
        with open(conf, "w") as f:
            f.write(self.sample_config_for(d, raft, client, http))
        with open(os.path.join(d, "tallyd.log"), "w+") as log:
            node = subprocess.Popen([os.path.join(self.bin, "tallyd"), "--config", conf], stderr=log)
            try:
                self.wait_ready(node, http)
                r = subprocess.run([os.path.join(self.bin, "tallyctl"), "--cluster",
                                    "127.0.0.1:%d" % client, "--key-file", os.path.join(d, "admin.key"),
                                    "--ca", os.path.join(d, "certs", "ca.pem"), "--json", "status"],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn('"leader":{"id":1', r.stdout)
            finally:
                node.send_signal(signal.SIGTERM)
                rc = node.wait(timeout=60)
            self.assertEqual(rc, 0)
            log.seek(0)
            self.check_json_log(log.read())

    def wait_ready(self, node, http):
        deadline = time.monotonic() + START_WAIT_S
        while True:
            self.assertIsNone(node.poll(), "tallyd exited during start")
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/health" % http, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            self.assertLess(time.monotonic(), deadline, "no /health 200 from the node")
            time.sleep(0.1)  # pacing the polling of /health, not waiting out a race

    def check_json_log(self, text):
        lines = [l for l in text.splitlines() if l.strip()]
        self.assertTrue(lines)
        components = set()
        for l in lines:
            if "Sanitizer" in l or "runtime error" in l:
                self.fail("a sanitizer report in the log: " + text[-4000:])
            rec = json.loads(l)  # every line is one JSON object
            self.assertEqual(set(rec), {"time", "level", "node", "component", "msg"}, l)
            self.assertRegex(rec["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertIn(rec["level"], ("error", "warn", "info", "debug"))
            self.assertEqual(rec["node"], 1)
            components.add(rec["component"])
        self.assertEqual(components, {"tallyd", "node"})
        self.assertEqual(json.loads(lines[-1])["msg"], "stopped")


if __name__ == "__main__":
    unittest.main(verbosity=2)
