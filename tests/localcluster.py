"""A local cluster of real tallyd processes for the Python tests (tools/tally-cluster).

The tests run from the repository (python3 tests/test_X.py), so this module is on
their path. TALLY_BUILD picks the build whose binaries run (default build/rel).
"""

import os
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("TALLY_BUILD", os.path.join(ROOT, "build", "rel"))
CLUSTER = os.path.join(ROOT, "tools", "tally-cluster")
TALLYCTL = os.path.join(BUILD, "tools", "tallyctl")


def start(prefix, args=()):
    """A 3-node TLS cluster in a new directory: (directory, base port, the environment
    its tools need: TALLY_CLUSTER, TALLY_KEY_DIR, TALLY_CA, TALLY_BUILD)."""
    d = tempfile.mkdtemp(prefix=prefix)
    env = dict(os.environ, TALLY_BUILD=BUILD)
    subprocess.run([CLUSTER, "start", "--dir", d, "--base-port", "auto"] + list(args),
                   check=True, env=env, stdout=subprocess.DEVNULL)
    with open(os.path.join(d, "base-port")) as f:
        base = int(f.read())
    with open(os.path.join(d, "env")) as f:
        for line in f:
            k, v = line.strip().split("=", 1)
            env[k] = v
    return d, base, env


def stop(d, env):
    """Stops the cluster and removes its directory; raises AssertionError with what a
    sanitizer build reported in the node logs, if anything."""
    subprocess.run([CLUSTER, "stop", "--dir", d], env=env, stdout=subprocess.DEVNULL)
    reports = []
    for i in (1, 2, 3):
        path = os.path.join(d, "node%d.log" % i)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read()
        if "Sanitizer" in text or "runtime error:" in text:
            reports.append("node %d:\n%s" % (i, text[-4000:]))
    shutil.rmtree(d, ignore_errors=True)
    assert not reports, "\n".join(reports)
