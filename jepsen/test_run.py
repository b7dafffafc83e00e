#!/usr/bin/env python3
"""Tests for jepsen/run's outcome classification: how each tallyctl outcome becomes
:ok, :fail or :info (HISTORY.md), for the classifier itself and for every workload's
op functions, without namespaces or a cluster (tallyctl is replaced by canned runs).

Run: python3 jepsen/test_run.py
"""

import argparse
import importlib.machinery
import importlib.util
import os
import random
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # jepsen/run imports lostwrites from beside it
_loader = importlib.machinery.SourceFileLoader("jepsen_run", os.path.join(HERE, "run"))
_spec = importlib.util.spec_from_loader("jepsen_run", _loader)
run = importlib.util.module_from_spec(_spec)
_loader.exec_module(run)
K = run.K

DONE = {"request_id": "r", "entry_seq": 7, "points": 5, "available": 10, "held": 0,
        "hold_id": 7}

# tallyctl outcomes: (exit, JSON, what an op with an effect is, what a read is).
OUTCOMES = [
    (4, None, "info", "fail"),                           # unknown outcome
    (run.RC_KILLED, None, "info", "fail"),               # killed at the wall-clock limit
    (-11, None, "info", "fail"),                         # crashed
    (-6, None, "info", "fail"),                          # aborted (a sanitizer)
    (1, None, "info", "fail"),                           # exit 1, no rejection printed
    (0, None, "info", "fail"),                           # exit 0, output unreadable
    (0, {"entry_seq": 1}, "info", "fail"),               # exit 0, not the answer expected
    (5, None, "info", "fail"),                           # outside the contract
    (127, None, "info", "fail"),                         # not found by the shell
    (run.RC_BAD_OUTPUT, None, "info", "fail"),
    (1, {"error": "INSUFFICIENT_POINTS", "message": "m"}, "fail", "fail"),
    (2, None, "fail", "fail"),                           # usage: nothing sent
    (3, None, "fail", "fail"),                           # not applied / no answer
    (run.RC_NOT_RUN, None, "fail", "fail"),              # tallyctl never started
]


class ClassifyTest(unittest.TestCase):
    def test_done_is_ok_with_the_answer_expected(self):
        self.assertEqual(run.classify(0, DONE, True), ("ok", None))
        self.assertEqual(run.classify(0, {"accounts": []}, False, shape=("accounts",)),
                         ("ok", None))

    def test_every_other_outcome_by_effect(self):
        for rc, js, effect_type, read_type in OUTCOMES:
            with self.subTest(rc=rc, js=js):
                self.assertEqual(run.classify(rc, js, True)[0], effect_type)
                self.assertEqual(run.classify(rc, js, False, shape=("accounts",))[0],
                                 read_type)

    def test_errors_name_the_outcome(self):
        self.assertEqual(run.classify(4, None, True), ("info", K("timeout")))
        self.assertEqual(run.classify(3, None, True), ("fail", "UNAVAILABLE"))
        self.assertEqual(run.classify(2, None, True), ("fail", "USAGE"))
        self.assertEqual(run.classify(1, {"error": "HOLD_RESOLVED"}, True),
                         ("fail", "HOLD_RESOLVED"))
        self.assertEqual(run.classify(-9, None, True), ("info", K("signal-9")))
        self.assertEqual(run.classify(0, None, True), ("info", K("bad-output")))

    def test_a_cluster_change_is_settled_when_done_or_found_done(self):
        self.assertTrue(run.settled(0, {"ok": True}, "NOT_FOUND"))
        self.assertTrue(run.settled(1, {"error": "NOT_FOUND"}, "NOT_FOUND"))
        self.assertTrue(run.settled(1, {"error": "ALREADY_EXISTS"}, "ALREADY_EXISTS"))
        self.assertFalse(run.settled(4, None, "NOT_FOUND"))
        self.assertFalse(run.settled(3, None, "NOT_FOUND"))
        self.assertFalse(run.settled(0, None, "NOT_FOUND"))
        self.assertFalse(run.settled(1, {"error": "PERMISSION_DENIED"}, "NOT_FOUND"))
        self.assertFalse(run.settled(1, {"error": "NOT_FOUND"}, "ALREADY_EXISTS"))


def read_json(args):
    """A well-formed answer to a read: the accounts asked for, or a digest."""
    if args[0] in ("balances", "balance"):
        members = (args[args.index("--members") + 1].split(",") if "--members" in args
                   else [args[args.index("--member") + 1]])
        return {"applied_index": 1, "accounts": [
            {"brand": "b", "member": m, "available": 1, "held": 0} for m in members]}
    return {"applied_index": 1, "tree_size": 1, "root": "00", "state_digest": "00",
            "time_ms": 1}


def stub_run(workload):
    """A Run with a fake tallyctl: the workload set up as jepsen/run does it, then every
    run answered by self.reply(args) or, for a read, self.reply_read(args) -> (exit,
    JSON). self.calls lists whether each run was a read."""
    r = object.__new__(run.Run)
    r.a = argparse.Namespace(workload=workload, concurrency=5, rate=1, time_limit=1, seed=1,
                             nodes=3, nemesis="none")
    r.history = []
    r.hlock = threading.Lock()
    r.t0 = time.monotonic_ns()
    r.net = 1
    r.nodes = {i: {} for i in range(1, 4)}
    r.calls = []

    def ctl(args, key=None, timeout_ms=1000, cluster=None, wall=15):
        args = [str(x) for x in args]
        read = not run.Run.mutating(args)
        r.calls.append(read)
        rc, js = r.reply_read(args) if read else r.reply(args)
        return rc, js, ""
    r.ctl = ctl
    r.reply = lambda args: (0, dict(DONE))
    r.reply_read = lambda args: (0, read_json(args))
    r.setup_workload()
    return r


class OpsTest(unittest.TestCase):
    """Every op of every workload records what classify says for its kind: each op runs
    tallyctl once, and its completion is judged by whether that run was a read."""

    def run_ops(self, workload, rc, js, n=200):
        """(completion, was a read) for n ops answered (rc, js) after 20 done ones (so
        that holds exist to capture and void)."""
        r = stub_run(workload)
        rng = random.Random(7)
        for _ in range(20):
            r.op(0, rng)
        r.reply = lambda args: (rc, js)
        r.reply_read = lambda args: (rc, js)
        done = []
        for i in range(n):
            calls, ops = len(r.calls), len(r.history)
            r.op(i, rng, final=(i % 10 == 0))
            if len(r.history) == ops:
                continue                  # nothing left to do (set: every value added)
            self.assertEqual(len(r.calls), calls + 1)
            done.append((r.history[-1], r.calls[-1]))
        return done

    def test_every_workload_maps_every_outcome(self):
        for workload in run.WORKLOADS:
            for rc, js, effect_type, read_type in OUTCOMES:
                with self.subTest(workload=workload, rc=rc, js=js):
                    done = self.run_ops(workload, rc, js)
                    self.assertTrue(any(read for _, read in done))
                    self.assertTrue(any(not read for _, read in done))
                    for o, read in done:
                        self.assertEqual(str(o["type"]), read_type if read else effect_type, o)

    def test_done_ops_are_ok_with_their_values(self):
        for workload in run.WORKLOADS:
            with self.subTest(workload=workload):
                r = stub_run(workload)
                rng = random.Random(3)
                for i in range(100):
                    r.op(i, rng, final=(i % 10 == 0))
                done = [o for o in r.history if o["type"] != "invoke"]
                self.assertTrue(all(o["type"] == "ok" for o in done))
                kinds = {str(o["f"]) for o in done}
                if workload == "redeem":
                    self.assertTrue({"hold", "capture", "void", "redeem", "read"} <= kinds, kinds)
                for o in done:
                    if o["f"] == "accrue" and workload == "idempotence":
                        self.assertEqual(o["value"]["applied-points"], 5)
                    if o["f"] == "hold":
                        self.assertEqual(o["value"]["hold"], 7)


if __name__ == "__main__":
    unittest.main()
