#!/usr/bin/env python3
"""Tests for jepsen/check.  Run: python3 jepsen/test_check.py"""

import importlib.machinery
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "check")

_loader = importlib.machinery.SourceFileLoader("jepsen_check", CHECK)
_spec = importlib.util.spec_from_loader("jepsen_check", _loader)
check = importlib.util.module_from_spec(_spec)
_loader.exec_module(check)
K = check.K


class History(object):
    """Builds history.edn text.  Values are given as EDN text."""

    def __init__(self):
        self.lines = []

    def event(self, type_, process, f, value="nil", extra=""):
        n = len(self.lines)
        proc = process if isinstance(process, str) else str(process)
        self.lines.append("{:index %d, :time %d, :type :%s, :process %s, :f :%s, :value %s%s}"
                          % (n, 1000 * n, type_, proc, f, value, extra))
        return self

    def invoke(self, p, f, value="nil"):
        return self.event("invoke", p, f, value)

    def complete(self, p, f, outcome, value="nil", extra=""):
        return self.event(outcome, p, f, value, extra)

    def call(self, p, f, value, outcome="ok", result=None, extra=""):
        """An invocation immediately followed by its completion."""
        self.invoke(p, f, value)
        return self.complete(p, f, outcome, value if result is None else result, extra)

    def nemesis(self, f, value='"majority"'):
        return self.event("info", ":nemesis", f, value)

    def text(self):
        return "\n".join(self.lines) + "\n"


def run(history, workload, *args):
    """Run the checker as a subprocess; returns (exit code, stdout, stderr)."""
    text = history.text() if isinstance(history, History) else history
    fd, path = tempfile.mkstemp(suffix=".edn")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        p = subprocess.run([sys.executable, CHECK, "--workload", workload] + list(args)
                           + [path], capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr
    finally:
        os.unlink(path)


def result(history, workload, total=None):
    return check.check_text(history.text(), workload, total)


# ---------------------------------------------------------------------------
# EDN reader
# ---------------------------------------------------------------------------

class EdnReaderTest(unittest.TestCase):
    def test_map_commas_keywords(self):
        m = check.loads_edn("{:type :ok, :process 3,, :f :start-partition}")
        self.assertEqual(m, {K("type"): K("ok"), K("process"): 3,
                             K("f"): K("start-partition")})

    def test_keyword_forms(self):
        self.assertEqual(check.loads_edn(":valid?"), K("valid?"))
        self.assertEqual(check.loads_edn(":jepsen.checker/set"), K("jepsen.checker/set"))
        self.assertEqual(check.loads_edn(":lost-writes"), K("lost-writes"))
        self.assertNotEqual(K("ok"), "ok")

    def test_strings_and_escapes(self):
        self.assertEqual(check.loads_edn(r'"a\"b\\c\nd\te\rf\u0041"'), 'a"b\\c\nd\te\rfA')
        self.assertEqual(check.loads_edn('"INSUFFICIENT_POINTS"'), "INSUFFICIENT_POINTS")
        self.assertEqual(check.loads_edn('"semi ; colon, comma"'), "semi ; colon, comma")
        self.assertEqual(check.loads_edn('"multi\nline"'), "multi\nline")

    def test_integers(self):
        self.assertEqual(check.loads_edn("0"), 0)
        self.assertEqual(check.loads_edn("-17"), -17)
        self.assertEqual(check.loads_edn("+5"), 5)
        self.assertEqual(check.loads_edn("123456789012345678901234N"),
                         123456789012345678901234)
        self.assertIsInstance(check.loads_edn("42"), int)

    def test_nil_true_false(self):
        self.assertIsNone(check.loads_edn("nil"))
        self.assertIs(check.loads_edn("true"), True)
        self.assertIs(check.loads_edn("false"), False)

    def test_vectors_sets_lists(self):
        self.assertEqual(check.loads_edn("[1 -2, :a \"s\" nil]"), [1, -2, K("a"), "s", None])
        self.assertEqual(check.loads_edn("[]"), [])
        s = check.loads_edn("#{0 1 2 3}")
        self.assertIsInstance(s, frozenset)
        self.assertEqual(s, frozenset([0, 1, 2, 3]))
        self.assertEqual(check.loads_edn("#{}"), frozenset())
        self.assertEqual(check.loads_edn("(1 2)"), (1, 2))

    def test_nested_maps_with_integer_keys(self):
        m = check.loads_edn("{1 {:available 70, :held 30}, -2 {:available 0 :held 0}, 3 [1]}")
        self.assertEqual(m[1], {K("available"): 70, K("held"): 30})
        self.assertEqual(m[-2][K("held")], 0)
        self.assertEqual(m[3], [1])

    def test_comments_and_discard(self):
        text = "; a comment\n{:a 1 ; trailing comment\n :b #_ :skipped 2}\n; end"
        self.assertEqual(check.loads_edn(text), {K("a"): 1, K("b"): 2})

    def test_read_all_reports_lines(self):
        forms = check.EdnReader("{:a 1}\n\n; c\n{:b\n 2}\n").read_all()
        self.assertEqual([line for line, _ in forms], [1, 4])

    def test_float(self):
        self.assertEqual(check.loads_edn("1.5"), 1.5)
        self.assertEqual(check.loads_edn("-2e3"), -2000.0)

    def assertMalformed(self, text, line=None):
        with self.assertRaises(check.EdnError) as cm:
            check.EdnReader(text).read_all()
        if line is not None:
            self.assertEqual(cm.exception.line, line, str(cm.exception))
        return cm.exception

    def test_malformed(self):
        self.assertMalformed("{:a 1", 1)
        self.assertMalformed("{:a 1}\n{:b 2\n", 2)
        self.assertMalformed('{:a "unterminated}', 1)
        self.assertMalformed('"bad \\q escape"')
        self.assertMalformed('"bad \\u12 escape"')
        self.assertMalformed("{:a 1 :b}")
        self.assertMalformed("{:a 1, :a 2}")
        self.assertMalformed("#{1 2 1}")
        self.assertMalformed("{:a 1}}")
        self.assertMalformed("[1 2}")
        self.assertMalformed("(1 2]")
        self.assertMalformed("{:a symbol}")
        self.assertMalformed("{: 1}")
        self.assertMalformed("{::a 1}")
        self.assertMalformed("{:a 1x}")
        self.assertMalformed("{:a 01}")
        self.assertMalformed("#inst \"2020-01-01\"")
        self.assertMalformed("\\c")
        self.assertMalformed("{[1] 2}")
        self.assertMalformed("#{{:a 1}}")
        self.assertMalformed("#_")

    def test_malformed_line_number(self):
        e = self.assertMalformed("{:a 1}\n{:b 2}\n{:c oops}\n", 3)
        self.assertIn("oops", e.msg)

    def test_writer_round_trip(self):
        v = {K("valid?"): False, K("lost"): [1, 2], 3: {K("s"): 'q"\\\n'},
             K("set"): frozenset([3, 1]), K("n"): None, K("k"): K("unknown")}
        self.assertEqual(check.loads_edn(check.dumps_edn(v)), v)


class HistoryParseTest(unittest.TestCase):
    def bad(self, text, line):
        with self.assertRaises(check.BadHistory) as cm:
            check.parse_history(text, "h.edn")
        self.assertIn("h.edn:%d" % line, str(cm.exception))

    def test_not_a_map(self):
        self.bad("{:type :invoke, :process 0, :f :read}\n[1 2]\n", 2)

    def test_bad_type_and_process(self):
        self.bad("{:type :done, :process 0, :f :read}\n", 1)
        self.bad("{:type :ok, :process \"p\", :f :read}\n", 1)
        self.bad("{:type :ok, :process 0, :f \"read\"}\n", 1)

    def test_completion_without_invoke(self):
        self.bad("{:type :ok, :process 0, :f :read, :value nil}\n", 1)

    def test_process_retired_after_info(self):
        h = History().call(0, "add", "1", "info").invoke(0, "add", "2")
        self.bad(h.text(), 3)

    def test_double_invoke(self):
        h = History().invoke(0, "add", "1").invoke(0, "add", "2")
        self.bad(h.text(), 2)

    def test_mismatched_f(self):
        h = History().invoke(0, "add", "1").complete(0, "read", "ok")
        self.bad(h.text(), 2)

    def test_nemesis_and_pending(self):
        h = History().nemesis("start-partition").invoke(0, "add", "1")
        h.nemesis("stop-partition")
        invokes = check.parse_history(h.text())
        self.assertEqual(len(invokes), 1)
        self.assertEqual(invokes[0].outcome(), "info")  # never completed

    def test_cli_malformed_exit_2_names_line(self):
        code, out, err = run("{:type :invoke, :process 0, :f :read, :value nil}\n{:type :ok\n",
                             "bank")
        self.assertEqual(code, 2)
        self.assertIn(":2:", err)
        code, out, err = run("{:a 1}\n{:b \"x\\q\"}\n", "set")
        self.assertEqual(code, 2)
        self.assertIn(":2:", err)

    def test_cli_schema_error_names_line(self):
        h = History().call(0, "read", "nil", "ok", "[1 2]")
        code, out, err = run(h, "bank")
        self.assertEqual(code, 2)
        self.assertIn(":2:", err)


# ---------------------------------------------------------------------------
# bank
# ---------------------------------------------------------------------------

def bank_clean():
    h = History()
    h.call(0, "read", "nil", "ok", "{0 10, 1 10, 2 10}")
    h.invoke(1, "transfer", "{:from 0, :to 1, :amount 5}")
    h.nemesis("start-partition")
    h.call(2, "read", "nil", "ok", "{0 5, 1 15, 2 10}")
    h.complete(1, "transfer", "ok", "{:from 0, :to 1, :amount 5}")
    h.call(0, "transfer", "{:from 2, :to 0, :amount 100}", "fail",
           extra=', :error "INSUFFICIENT_POINTS"')
    h.call(2, "transfer", "{:from 1, :to 2, :amount 3}", "info", extra=", :error :timeout")
    h.nemesis("stop-partition")
    h.call(0, "read", "nil", "ok", "{0 5, 1 12, 2 13}")
    h.call(5, "read", "nil", "fail", "nil")
    return h


class BankTest(unittest.TestCase):
    def test_clean_valid(self):
        code, out, err = run(bank_clean(), "bank", "--total", "30")
        self.assertEqual(code, 0, out + err)
        r = check.loads_edn(out)
        self.assertIs(r[K("valid?")], True)
        self.assertEqual(r[K("read-count")], 3)
        self.assertEqual(r[K("bad-reads")], [])

    def test_derived_total_reports_unknown_total(self):
        r = result(bank_clean(), "bank")
        self.assertIs(r["valid?"], True)
        self.assertIs(r["unknown-total"], True)
        self.assertEqual(r["total"], 30)
        self.assertNotIn("unknown-total", result(bank_clean(), "bank", 30))

    def test_wrong_total(self):
        h = bank_clean().call(0, "read", "nil", "ok", "{0 5, 1 12, 2 14}")
        code, out, err = run(h, "bank", "--total", "30")
        self.assertEqual(code, 1, out + err)
        r = result(h, "bank", 30)
        self.assertEqual(r["bad-read-count"], 1)
        bad = r["bad-reads"][0]
        self.assertEqual(bad["index"], len(h.lines) - 1)
        self.assertEqual(bad["total"], 31)
        self.assertEqual(bad["why"], [K("wrong-total")])

    def test_wrong_total_given_total(self):
        r = result(bank_clean(), "bank", 40)   # every read is short of 40
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["bad-read-count"], 3)

    def test_negative_balance(self):
        h = bank_clean().call(0, "read", "nil", "ok", "{0 -5, 1 22, 2 13}")
        code, out, err = run(h, "bank")
        self.assertEqual(code, 1, out + err)
        bad = result(h, "bank")["bad-reads"][0]
        self.assertEqual(bad["why"], [K("negative-value")])
        self.assertEqual(bad["negative"], {0: -5})

    def test_unexpected_key(self):
        h = bank_clean().call(0, "read", "nil", "ok", "{0 5, 1 12, 2 13, 7 0}")
        code, out, err = run(h, "bank", "--total", "30")
        self.assertEqual(code, 1, out + err)
        bad = result(h, "bank", 30)["bad-reads"][0]
        self.assertEqual(bad["why"], [K("unexpected-key")])
        self.assertEqual(bad["unexpected-keys"], [7])

    def test_missing_key(self):
        h = bank_clean().call(0, "read", "nil", "ok", "{0 5, 1 25}")
        bad = result(h, "bank", 30)["bad-reads"][0]
        self.assertEqual(bad["why"], [K("missing-key")])
        self.assertEqual(bad["missing-keys"], [2])

    def test_no_ok_reads_is_unknown(self):
        h = History().call(0, "transfer", "{:from 0, :to 1, :amount 5}", "ok")
        h.call(1, "read", "nil", "info")
        code, out, err = run(h, "bank", "--total", "30")
        self.assertEqual(code, 2, out + err)
        self.assertEqual(check.loads_edn(out)[K("valid?")], K("unknown"))

    def test_json(self):
        code, out, err = run(bank_clean(), "bank", "--json")
        self.assertEqual(code, 0, err)
        r = json.loads(out)
        self.assertIn("valid?", r)
        self.assertIs(r["valid?"], True)
        h = bank_clean().call(0, "read", "nil", "ok", "{0 -5, 1 22, 2 13}")
        code, out, err = run(h, "bank", "--json")
        self.assertEqual(code, 1)
        r = json.loads(out)
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["bad-reads"][0]["why"], ["negative-value"])


# ---------------------------------------------------------------------------
# set
# ---------------------------------------------------------------------------

def set_history(final="#{0 1 2 3}", extra_adds=()):
    h = History()
    h.call(0, "add", "0", "ok")
    h.call(1, "add", "1", "ok")
    h.nemesis("start-kill")
    h.call(0, "add", "2", "ok")
    h.call(1, "add", "3", "ok")
    h.call(0, "add", "4", "fail", extra=', :error "UNAVAILABLE"')
    for v, outcome, p in extra_adds:
        h.call(p, "add", str(v), outcome)
    h.nemesis("stop-kill")
    h.call(9, "read", "nil", "ok", final)
    return h


class SetTest(unittest.TestCase):
    def test_clean_valid(self):
        code, out, err = run(set_history(), "set")
        self.assertEqual(code, 0, out + err)
        r = result(set_history(), "set")
        self.assertEqual(r["attempt-count"], 5)
        self.assertEqual(r["acknowledged-count"], 4)
        self.assertEqual(r["ok-count"], 4)
        for k in ("lost", "unexpected", "recovered"):
            self.assertEqual(r[k + "-count"], 0)
            self.assertEqual(r[k], [])

    def test_lost(self):
        h = set_history("#{0 1 3}")
        code, out, err = run(h, "set")
        self.assertEqual(code, 1, out + err)
        r = result(h, "set")
        self.assertEqual((r["lost-count"], r["lost"]), (1, [2]))

    def test_unexpected(self):
        h = set_history("#{0 1 2 3 99}")
        code, out, err = run(h, "set")
        self.assertEqual(code, 1, out + err)
        r = result(h, "set")
        self.assertEqual((r["unexpected-count"], r["unexpected"]), (1, [99]))

    def test_duplicated(self):
        h = set_history("[0 1 2 2 3]")
        code, out, err = run(h, "set")
        self.assertEqual(code, 1, out + err)
        r = result(h, "set")
        self.assertEqual(r["duplicated-count"], 1)
        self.assertEqual(r["duplicated"], {2: 2})
        # a vector without duplicates is fine
        self.assertIs(result(set_history("[3 2 1 0]"), "set")["valid?"], True)

    def test_recovered_counted_but_valid(self):
        h = set_history("#{0 1 2 3 5}", [(5, "info", 2), (6, "info", 3)])
        code, out, err = run(h, "set")
        self.assertEqual(code, 0, out + err)
        r = result(h, "set")
        self.assertEqual((r["recovered-count"], r["recovered"]), (1, [5]))
        self.assertEqual(r["lost-count"], 0)   # 6 was :info, absent: not lost
        self.assertEqual(r["ok-count"], 5)

    def test_failed_add_present_is_invalid(self):
        h = set_history("#{0 1 2 3 4}")
        r = result(h, "set")
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["failed-present"], [4])

    def test_no_final_read_is_unknown(self):
        h = History().call(0, "add", "0", "ok").call(1, "read", "nil", "info")
        code, out, err = run(h, "set")
        self.assertEqual(code, 2, out + err)

    def test_examples_truncated_to_20(self):
        h = History()
        for v in range(30):
            h.call(0, "add", str(v), "ok")
        h.call(0, "read", "nil", "ok", "#{}")
        r = result(h, "set")
        self.assertEqual(r["lost-count"], 30)
        self.assertEqual(r["lost"], list(range(20)))

    def test_json(self):
        code, out, err = run(set_history("#{0 1 3}"), "set", "--json")
        self.assertEqual(code, 1)
        r = json.loads(out)
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["lost"], [2])


# ---------------------------------------------------------------------------
# idempotence
# ---------------------------------------------------------------------------

def accrue(rid, member, points, variant=0):
    return '{:id "%s", :member %d, :points %d, :variant %d}' % (rid, member, points, variant)


def acked(rid, member, points, variant=0, replay=False, applied=None):
    return ('{:id "%s", :member %d, :points %d, :variant %d, :replay %s, :applied-points %d}'
            % (rid, member, points, variant, "true" if replay else "false",
               points if applied is None else applied))


def idem_history(final="{3 17, 4 5}", more=None):
    h = History()
    h.call(0, "accrue", accrue("i-1", 3, 7), "ok", acked("i-1", 3, 7))
    # i-2: timed out, then resubmitted with the same content: answered as a replay
    h.call(1, "accrue", accrue("i-2", 3, 10), "info", extra=", :error :timeout")
    h.call(2, "accrue", accrue("i-2", 3, 10), "ok", acked("i-2", 3, 10, replay=True))
    # i-3: different content refused
    h.call(0, "accrue", accrue("i-3", 4, 5), "ok", acked("i-3", 4, 5))
    h.call(0, "accrue", accrue("i-3", 4, 6, 1), "fail", extra=', :error "IDEMPOTENCY_CONFLICT"')
    h.call(0, "accrue", accrue("i-3", 4, 5), "ok", acked("i-3", 4, 5, replay=True))
    # i-4: only :info -- may or may not have applied
    h.call(2, "accrue", accrue("i-4", 4, 9), "info")
    if more:
        more(h)
    h.call(0, "read", "nil", "ok", final)
    return h


class IdempotenceTest(unittest.TestCase):
    def test_clean_valid(self):
        code, out, err = run(idem_history(), "idempotence")
        self.assertEqual(code, 0, out + err)
        r = result(idem_history(), "idempotence")
        self.assertEqual(r["certain-ids"], 3)
        self.assertEqual(r["possible-ids"], 1)
        self.assertEqual(r["replay-count"], 2)

    def test_info_may_have_applied(self):
        r = result(idem_history("{3 17, 4 14}"), "idempotence")   # i-4 applied
        self.assertIs(r["valid?"], True)

    def test_double_applied(self):
        h = idem_history("{3 24, 4 5}")   # i-1 (7 points) counted twice
        code, out, err = run(h, "idempotence")
        self.assertEqual(code, 1, out + err)
        r = result(h, "idempotence")
        self.assertEqual(r["bad-balances"],
                         [{"member": 3, "balance": 24, "expected": [17, 17],
                           "why": K("too-high")}])
        self.assertEqual([d["id"] for d in r["double-applied"]], ["i-1"])

    def test_double_applied_fresh_acks(self):
        def more(h):
            h.call(3, "accrue", accrue("i-1", 3, 7), "ok", acked("i-1", 3, 7, replay=False))
        r = result(idem_history("{3 17, 4 5}", more), "idempotence")
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["double-applied"][0]["evidence"], K("fresh-acks"))

    def test_different_content_acknowledged(self):
        def more(h):
            h.call(3, "accrue", accrue("i-1", 3, 8, 1), "ok",
                   acked("i-1", 3, 8, 1, replay=True, applied=7))
        h = idem_history("{3 17, 4 5}", more)
        code, out, err = run(h, "idempotence")
        self.assertEqual(code, 1, out + err)
        r = result(h, "idempotence")
        self.assertEqual(r["conflicting-ack-count"], 1)
        self.assertEqual(r["conflicting-acks"][0]["id"], "i-1")
        self.assertEqual(r["conflicting-acks"][0]["points"], [7, 8])

    def test_too_low(self):
        r = result(idem_history("{3 10, 4 5}"), "idempotence")
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["bad-balances"][0]["why"], K("too-low"))
        self.assertEqual(r["bad-balances"][0]["expected"], [17, 17])

    def test_missing_member_counts_as_zero(self):
        r = result(idem_history("{3 17}"), "idempotence")
        self.assertIs(r["valid?"], False)
        self.assertIs(r["bad-balances"][0]["missing"], True)

    def test_no_read_is_unknown(self):
        h = History().call(0, "accrue", accrue("i-1", 3, 7), "ok", acked("i-1", 3, 7))
        code, out, err = run(h, "idempotence")
        self.assertEqual(code, 2, out + err)

    def test_json(self):
        code, out, err = run(idem_history(), "idempotence", "--json")
        self.assertEqual(code, 0, err)
        self.assertIs(json.loads(out)["valid?"], True)


# ---------------------------------------------------------------------------
# redeem
# ---------------------------------------------------------------------------

def bal(a, h):
    return "{:available %d, :held %d}" % (a, h)


def redeem_history(more=None):
    """Members 1 and 2 funded with 100 each (total 200)."""
    h = History()
    h.call(0, "read", "nil", "ok", "{1 %s, 2 %s}" % (bal(100, 0), bal(100, 0)))
    h.call(0, "hold", "{:member 1, :points 30}", "ok", "{:member 1, :points 30, :hold 123}")
    h.call(1, "hold", "{:member 2, :points 40}", "ok", "{:member 2, :points 40, :hold 124}")
    h.call(0, "read", "nil", "ok", "{1 %s, 2 %s}" % (bal(70, 30), bal(60, 40)))
    h.call(0, "capture", "{:hold 123}", "ok")
    h.call(1, "void", "{:hold 124}", "ok")
    h.call(1, "void", "{:hold 124}", "fail", extra=', :error "HOLD_NOT_ACTIVE"')
    h.call(0, "redeem", "{:member 2, :points 20}", "ok")
    h.call(0, "redeem", "{:member 2, :points 500}", "fail", extra=', :error "INSUFFICIENT_POINTS"')
    h.call(0, "read", "nil", "ok", "{1 %s, 2 %s}" % (bal(70, 0), bal(80, 0)))
    if more:
        more(h)
    return h


class RedeemTest(unittest.TestCase):
    def test_clean_valid(self):
        code, out, err = run(redeem_history(), "redeem", "--total", "200")
        self.assertEqual(code, 0, out + err)
        r = result(redeem_history(), "redeem", 200)
        self.assertEqual(r["read-count"], 3)
        self.assertEqual(r["bad-totals"], [])

    def test_derived_total(self):
        r = result(redeem_history(), "redeem")
        self.assertIs(r["valid?"], True)
        self.assertIs(r["unknown-total"], True)
        self.assertEqual(r["total-interval"], [200, 200])

    def test_negative_balance(self):
        def more(h):
            h.call(0, "read", "nil", "ok", "{1 %s, 2 %s}" % (bal(-10, 80), bal(80, 0)))
        h = redeem_history(more)
        code, out, err = run(h, "redeem", "--total", "200")
        self.assertEqual(code, 1, out + err)
        r = result(h, "redeem", 200)
        self.assertEqual(r["negative-read-count"], 1)
        self.assertEqual(r["negative-reads"][0]["member"], 1)
        self.assertEqual(r["bad-totals"], [])

    def test_hold_captured_then_voided(self):
        def more(h):
            h.call(1, "void", "{:hold 123}", "ok")
        h = redeem_history(more)
        code, out, err = run(h, "redeem", "--total", "200")
        self.assertEqual(code, 1, out + err)
        r = result(h, "redeem", 200)
        self.assertEqual(r["double-resolved-count"], 1)
        d = r["double-resolved-holds"][0]
        self.assertEqual(d["hold"], 123)
        self.assertEqual([f for f, _ in d["resolutions"]], [K("capture"), K("void")])

    def test_points_reappear(self):
        def more(h):
            h.call(0, "read", "nil", "ok", "{1 %s, 2 %s}" % (bal(100, 0), bal(80, 0)))
        r = result(redeem_history(more), "redeem", 200)
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["bad-totals"][0]["why"], K("too-high"))
        self.assertEqual(r["bad-totals"][0]["expected"], [150, 150])
        # and without --total, the reads disagree about the funding total
        self.assertIs(result(redeem_history(more), "redeem")["valid?"], False)

    def test_more_than_funding(self):
        h = History().call(0, "read", "nil", "ok", "{1 %s}" % bal(120, 0))
        self.assertIs(result(h, "redeem", 100)["valid?"], False)

    def test_info_redeem_either_way(self):
        for after in (80, 70):
            def more(h, after=after):
                h.call(2, "redeem", "{:member 2, :points 10}", "info")
                h.call(0, "read", "nil", "ok", "{1 %s, 2 %s}" % (bal(70, 0), bal(after, 0)))
            r = result(redeem_history(more), "redeem", 200)
            self.assertIs(r["valid?"], True, (after, r))
        def lost(h):
            h.call(2, "redeem", "{:member 2, :points 10}", "info")
            h.call(0, "read", "nil", "ok", "{1 %s, 2 %s}" % (bal(70, 0), bal(60, 0)))
        self.assertIs(result(redeem_history(lost), "redeem", 200)["valid?"], False)

    def test_concurrent_capture_either_way(self):
        for held1, avail1 in ((30, 70), (0, 70)):
            h = History()
            h.call(0, "hold", "{:member 1, :points 30}", "ok", "{:member 1, :points 30, :hold 9}")
            h.invoke(0, "capture", "{:hold 9}")
            h.call(1, "read", "nil", "ok", "{1 %s}" % bal(avail1, held1))
            h.complete(0, "capture", "ok", "{:hold 9}")
            h.call(1, "read", "nil", "ok", "{1 %s}" % bal(70, 0))
            r = result(h, "redeem", 100)
            self.assertIs(r["valid?"], True, r)

    def test_no_reads_is_unknown(self):
        h = History().call(0, "redeem", "{:member 1, :points 5}", "ok")
        code, out, err = run(h, "redeem", "--total", "100")
        self.assertEqual(code, 2, out + err)

    def test_json(self):
        code, out, err = run(redeem_history(), "redeem", "--json")
        self.assertEqual(code, 0, err)
        r = json.loads(out)
        self.assertIs(r["valid?"], True)
        self.assertIn("bad-totals", r)


class TimedHistory(History):
    """A history whose events carry the :time given (ms on the client's clock)."""

    def __init__(self):
        History.__init__(self)
        self.ms = 0

    def at(self, ms):
        self.ms = ms
        return self

    def event(self, type_, process, f, value="nil", extra=""):
        n = len(self.lines)
        self.lines.append("{:index %d, :time %d, :type :%s, :process %s, :f :%s, :value %s%s}"
                          % (n, self.ms * 1000000, type_, process, f, value, extra))
        return self


def hold(h, p, hid, timeout_s, at_ms):
    h.at(at_ms).invoke(p, "hold", "{:member 0, :points 5, :timeout-s %d}" % timeout_s)
    return h.at(at_ms + 10).complete(p, "hold", "ok",
                                     "{:member 0, :points 5, :timeout-s %d, :hold %d}"
                                     % (timeout_s, hid))


def resolve(h, p, f, hid, at_ms, outcome="ok", error=None, took_ms=10):
    h.at(at_ms).invoke(p, f, "{:hold %d}" % hid)
    extra = ', :error "%s"' % error if error else ""
    return h.at(at_ms + took_ms).complete(p, f, outcome, "{:hold %d}" % hid, extra)


def read_time(h, p, at_ms, ledger_ms, wall_ms):
    h.at(at_ms).invoke(p, "read-time")
    return h.at(at_ms + 5).complete(p, "read-time", "ok",
                                    "{:ledger-time %d, :wall-before %d, :wall-after %d}"
                                    % (ledger_ms, wall_ms - 5, wall_ms))


class HoldsTest(unittest.TestCase):
    def test_clean_valid(self):
        h = TimedHistory()
        hold(h, 0, 1, 8, 0)
        hold(h, 1, 2, 5, 100)
        resolve(h, 0, "capture", 1, 4000)                          # before its time: ok
        resolve(h, 1, "void", 2, 7000, "fail", "HOLD_EXPIRED")     # after 5 s: released
        read_time(h, 2, 7100, 1796000000000, 1796000000100)
        r = result(h, "holds")
        self.assertIs(r["valid?"], True)
        self.assertEqual(r["released-count"], 1)
        self.assertEqual(r["released-early-count"], 0)

    def test_released_early_is_invalid(self):
        h = TimedHistory()
        hold(h, 0, 1, 12, 0)
        resolve(h, 0, "capture", 1, 6000, "fail", "HOLD_EXPIRED")  # 6 s into 12 s
        r = result(h, "holds")
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["released-early-count"], 1)
        self.assertEqual(r["released-early"][0]["early-ms"], 12000 - 6010)

    def test_release_within_the_bound_is_valid(self):
        h = TimedHistory()
        hold(h, 0, 1, 12, 0)
        # Released 1.5 s before the timeout: within CLOCK_EARLY_MAX_MS (2 s).
        resolve(h, 0, "capture", 1, 10490, "fail", "HOLD_EXPIRED")
        self.assertIs(result(h, "holds")["valid?"], True)

    def test_release_just_past_the_bound_is_invalid(self):
        h = TimedHistory()
        hold(h, 0, 1, 12, 0)
        resolve(h, 0, "void", 1, 9980, "fail", "HOLD_EXPIRED", took_ms=10)  # 2.01 s early
        self.assertIs(result(h, "holds")["valid?"], False)

    def test_the_hold_counts_from_its_invocation(self):
        # The hold began somewhere between its invocation and its completion (10 s
        # apart here); only the invocation surely came first, so a release is judged
        # against invocation + timeout: 10.1 s into 12 s is within the 2 s bound,
        # 9 s is not.
        h = TimedHistory()
        h.at(0).invoke(0, "hold", "{:member 0, :points 5, :timeout-s 12}")
        h.at(10000).complete(0, "hold", "ok", "{:member 0, :points 5, :timeout-s 12, :hold 3}")
        resolve(h, 0, "capture", 3, 10100, "fail", "HOLD_EXPIRED")
        self.assertIs(result(h, "holds")["valid?"], True)  # 10.1 s of 12: within 2 s
        h2 = TimedHistory()
        h2.at(0).invoke(0, "hold", "{:member 0, :points 5, :timeout-s 12}")
        h2.at(10000).complete(0, "hold", "ok", "{:member 0, :points 5, :timeout-s 12, :hold 3}")
        resolve(h2, 0, "capture", 3, 9000, "fail", "HOLD_EXPIRED")
        self.assertIs(result(h2, "holds")["valid?"], False)

    def test_other_refusals_and_unknown_outcomes_prove_nothing(self):
        h = TimedHistory()
        hold(h, 0, 1, 12, 0)
        resolve(h, 0, "capture", 1, 100, "fail", "UNAVAILABLE")
        h.at(200).invoke(1, "capture", "{:hold 1}")
        h.at(300).complete(1, "capture", "info", "{:hold 1}", ", :error :timeout")
        read_time(h, 2, 400, 1796000000000, 1796000000000)
        r = result(h, "holds")
        self.assertIs(r["valid?"], True)
        self.assertEqual(r["released-count"], 0)

    def test_ledger_time_ahead_of_the_clients_clock_is_invalid(self):
        h = TimedHistory()
        read_time(h, 0, 0, 1796000001500, 1796000000000)
        r = result(h, "holds")
        self.assertIs(r["valid?"], False)
        self.assertEqual(r["time-ahead"][0]["ahead-ms"], 1500)
        h2 = TimedHistory()
        read_time(h2, 0, 0, 1796000000900, 1796000000000)  # within 1 s
        self.assertIs(result(h2, "holds")["valid?"], True)

    def test_a_resolution_of_a_hold_never_taken_is_reported(self):
        h = TimedHistory()
        resolve(h, 0, "capture", 99, 100, "fail", "HOLD_NOT_FOUND")
        read_time(h, 1, 200, 1796000000000, 1796000000000)
        r = result(h, "holds")
        self.assertEqual(r["unknown-holds"], [99])

    def test_nothing_observed_is_unknown(self):
        h = TimedHistory()
        hold(h, 0, 1, 12, 0)
        self.assertEqual(result(h, "holds")["valid?"], K("unknown"))
        self.assertEqual(run(h, "holds")[0], 2)

    def test_missing_time_is_a_bad_history(self):
        h = History()
        h.call(0, "hold", "{:member 0, :points 5, :timeout-s 5}",
               result="{:member 0, :points 5, :timeout-s 5, :hold 1}")
        text = h.text().replace(":time ", ":tim ")
        code, out, err = run(text, "holds")
        self.assertEqual(code, 2)
        self.assertIn("needs :time", err)


# ---------------------------------------------------------------------------
# register
# ---------------------------------------------------------------------------

def pts(m, k, available=None):
    extra = "" if available is None else ", :available %d" % available
    return "{:member %d, :points %d%s}" % (m, k, extra)


def members(*ms):
    return "{:members [%s]}" % " ".join(str(m) for m in ms)


def balances(bals, applied=1):
    ms = " ".join(str(m) for m in bals)
    bs = ", ".join("%d %d" % mb for mb in bals.items())
    return "{:members [%s], :balances {%s}, :applied-index %d}" % (ms, bs, applied)


def stale(node, m):
    return "{:node %d, :members [%d]}" % (node, m)


def stale_ok(node, m, b, applied):
    return "{:node %d, :members [%d], :balances {%d %d}, :applied-index %d}" % (
        node, m, m, b, applied)


SHORT = ', :error "INSUFFICIENT_POINTS"'


def write(h, p, f, m, k, outcome="ok", available=None, extra=""):
    return h.call(p, f, pts(m, k), outcome, pts(m, k, available), extra)


def read(h, p, bals):
    return h.call(p, "read", members(*bals), "ok", balances(bals))


def register_clean():
    """Member 1, five clients, overlapping ops, a rejected redeem, and member 2."""
    h = History()
    h.invoke(0, "accrue", pts(1, 5))
    h.invoke(1, "read", members(1))
    h.complete(1, "read", "ok", balances({1: 0}))       # before the accrual took effect
    h.invoke(2, "read", members(1))
    h.complete(0, "accrue", "ok", pts(1, 5, 5))
    h.invoke(3, "read", members(1))
    h.complete(3, "read", "ok", balances({1: 5}))
    h.complete(2, "read", "ok", balances({1: 0}))       # concurrent with the accrual
    h.invoke(1, "redeem", pts(1, 3))
    h.invoke(4, "accrue", pts(1, 4))
    h.complete(4, "accrue", "ok", pts(1, 4, 6))         # redeem first: 5 - 3 + 4
    h.complete(1, "redeem", "ok", pts(1, 3, 2))
    write(h, 0, "redeem", 1, 7, "fail", 6, SHORT)       # saw 6 < 7
    write(h, 0, "accrue", 2, 9, "ok", 9)
    h.call(0, "redeem", pts(2, 4), "fail", extra=', :error "UNAVAILABLE"')
    h.call(3, "read", members(1, 2), "ok", balances({1: 6, 2: 9}))
    return h


class RegisterTest(unittest.TestCase):
    def check(self, h, valid, **kw):
        r = check.check_text(h.text(), "register", **kw)
        self.assertEqual(r["valid?"], valid, r)
        return r

    def anomaly(self, h):
        r = self.check(h, False)
        self.assertEqual(r["anomaly-count"], 1, r)
        return r["anomalies"][0]

    def test_clean_concurrent_valid(self):
        code, out, err = run(register_clean(), "register")
        self.assertEqual(code, 0, out + err)
        r = check.loads_edn(out)
        self.assertEqual(r[K("member-count")], 2)
        self.assertEqual(r[K("read-ok-count")], 4)
        self.assertEqual(r[K("redeem-fail-count")], 2)
        self.assertEqual(r[K("anomalies")], [])

    def test_stale_read_after_acknowledged_write(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        read(h, 1, {1: 0})                   # began after the accrual was acknowledged
        a = self.anomaly(h)
        self.assertEqual(a["member"], 1)
        self.assertEqual(a["why"], K("not-linearizable"))
        self.assertEqual(a["op"]["index"], 3)
        self.assertEqual(a["states"], [5])
        self.assertIs(a["value-reachable"], True)

    def test_stale_read_after_a_read_saw_the_write(self):
        h = History().invoke(0, "accrue", pts(1, 5))
        read(h, 1, {1: 5})
        read(h, 2, {1: 0})                   # after a read that saw it: new, then old
        h.complete(0, "accrue", "ok", pts(1, 5, 5))
        self.assertEqual(self.anomaly(h)["op"]["index"], 4)

    def test_lost_write(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        write(h, 1, "accrue", 1, 2, "ok", 2)  # the first accrual is gone
        a = self.anomaly(h)
        self.assertEqual(a["op"]["f"], K("accrue"))
        self.assertEqual(a["op"]["index"], 3)
        self.assertEqual(a["states"], [5])
        # without the balance a write returns, the reads show it
        h = History().call(0, "accrue", pts(1, 5), "ok").call(1, "accrue", pts(1, 2), "ok")
        read(h, 2, {1: 2})
        self.assertEqual(self.anomaly(h)["op"]["index"], 5)

    def test_read_of_a_value_never_written(self):
        h = History().invoke(0, "accrue", pts(1, 5)).invoke(1, "accrue", pts(1, 3))
        read(h, 2, {1: 4})
        h.complete(0, "accrue", "ok", pts(1, 5)).complete(1, "accrue", "ok", pts(1, 3))
        a = self.anomaly(h)
        self.assertEqual(a["op"]["value"][K("balances")], {1: 4})
        self.assertEqual(a["states"], [0, 3, 5, 8])     # every balance it could have seen
        self.assertIs(a["value-reachable"], False)

    def test_info_write_assumed_applied(self):
        h = History().call(0, "accrue", pts(1, 5), "info")
        read(h, 1, {1: 5})
        write(h, 1, "accrue", 1, 1, "ok", 6)
        self.check(h, True)

    def test_info_write_assumed_not_applied(self):
        h = History().call(0, "accrue", pts(1, 5), "info")
        read(h, 1, {1: 0})
        write(h, 1, "redeem", 1, 1, "fail", 0, SHORT)
        self.check(h, True)

    def test_info_write_applied_after_it_timed_out(self):
        h = History().call(0, "accrue", pts(1, 5), "info")
        read(h, 1, {1: 0})
        read(h, 1, {1: 5})                   # took effect after its :info and a read
        self.check(h, True)
        read(h, 1, {1: 0})                   # but it cannot be undone
        self.anomaly(h)

    def test_info_redeem_needs_the_points(self):
        h = History()
        write(h, 0, "accrue", 1, 3, "ok", 3)
        h.call(1, "redeem", pts(1, 5), "info")   # 3 < 5: it did nothing
        read(h, 2, {1: 3})
        self.check(h, True)
        read(h, 2, {1: -2})
        self.assertIs(self.anomaly(h)["value-reachable"], False)

    def test_info_writes_combine(self):
        h = History()
        for p, k in enumerate((4, 2, 9, 2)):
            h.call(p, "accrue", pts(1, k), "info")
        read(h, 7, {1: 6})                   # 4 + 2, or 2 + 2 + ... no: 4 + 2
        read(h, 7, {1: 8})                   # and the other 2
        self.check(h, True)
        read(h, 7, {1: 10})                  # nothing of 2 is left
        self.anomaly(h)

    def test_redeem_beyond_the_balance(self):
        h = History()
        write(h, 0, "accrue", 1, 3, "ok", 3)
        write(h, 0, "redeem", 1, 5, "ok", -2)
        self.assertEqual(self.anomaly(h)["op"]["f"], K("redeem"))

    def test_rejected_redeem_is_an_observation(self):
        h = History()
        write(h, 0, "accrue", 1, 30, "ok", 30)
        write(h, 0, "redeem", 1, 20, "fail", 3, SHORT)   # saw 3, but it was 30
        self.anomaly(h)
        h = History()
        write(h, 0, "accrue", 1, 30, "ok", 30)
        h.call(0, "redeem", pts(1, 20), "fail", extra=SHORT)   # saw < 20: no
        self.anomaly(h)

    def test_failed_write_must_not_show(self):
        h = History().call(0, "accrue", pts(1, 5), "fail", extra=', :error "UNAVAILABLE"')
        read(h, 1, {1: 5})
        self.anomaly(h)

    def test_members_are_independent(self):
        h = register_clean()
        write(h, 0, "accrue", 3, 1, "ok", 1)
        read(h, 0, {2: 9, 3: 0})             # member 3 lost its accrual
        r = self.check(h, False)
        self.assertEqual([a["member"] for a in r["anomalies"]], [3])
        self.assertEqual(r["members"][1]["valid?"], True)
        self.assertEqual(r["members"][3]["valid?"], False)

    def test_stale_reads_may_lag(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        write(h, 0, "accrue", 1, 2, "ok", 7)
        h.call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 5, 10))
        h.call(1, "stale-read", stale(3, 1), "ok", stale_ok(3, 1, 0, 3))
        h.call(1, "stale-read", stale(3, 1), "ok", stale_ok(3, 1, 7, 12))
        read(h, 2, {1: 7})
        r = self.check(h, True)
        self.assertEqual(r["members"][1]["stale-reads"], 3)
        self.assertEqual(r["stale-regression-count"], 0)

    def test_stale_reads_out_of_index_order(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        h.call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 5, 10))
        h.call(1, "stale-read", stale(3, 1), "ok", stale_ok(3, 1, 0, 12))  # later, older
        read(h, 2, {1: 5})
        self.assertEqual(self.anomaly(h)["op"]["f"], K("stale-read"))

    def test_stale_read_from_the_future(self):
        h = History().call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 5, 10))
        write(h, 0, "accrue", 1, 5, "ok", 5)  # invoked after the stale read returned
        read(h, 2, {1: 5})
        self.anomaly(h)

    def test_stale_read_of_a_value_never_written(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        h.call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 4, 10))
        read(h, 2, {1: 5})
        self.assertIs(self.anomaly(h)["value-reachable"], False)

    def test_stale_reads_at_one_index_disagree(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        h.call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 5, 10))
        h.call(1, "stale-read", stale(3, 1), "ok", stale_ok(3, 1, 0, 10))
        read(h, 2, {1: 5})
        a = self.anomaly(h)
        self.assertEqual(a["why"], K("stale-reads-disagree"))
        self.assertEqual(a["applied-index"], 10)

    def test_stale_regression_is_reported_not_invalid(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        h.call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 5, 10))
        h.call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 0, 4))  # node 2 restarted
        read(h, 2, {1: 5})
        r = self.check(h, True)
        self.assertEqual(r["stale-regression-count"], 1)
        self.assertEqual(r["stale-regressions"][0]["applied-index"], 4)

    def test_search_bound_is_unknown(self):
        h = History()
        for p, k in enumerate((1, 2, 3, 4, 5, 6, 7, 8)):
            h.call(p, "accrue", pts(1, k), "info")
        read(h, 9, {1: 37})                  # beyond all of them: every subset is tried
        r = self.check(h, K("unknown"), max_configs=20)
        self.assertEqual(r["unknowns"][0]["why"], K("search-bound"))
        self.assertEqual(r["unknowns"][0]["member"], 1)
        self.assertEqual(r["anomalies"], [])
        self.assertGreater(self.check(h, False)["configs"], 20)
        code, out, err = run(h, "register", "--max-configs", "20")
        self.assertEqual(code, 2, out + err)

    def test_too_many_ops_is_unknown(self):
        h = register_clean()
        saved = check.REGISTER_MAX_OPS
        check.REGISTER_MAX_OPS = 5
        try:
            r = self.check(h, K("unknown"))
        finally:
            check.REGISTER_MAX_OPS = saved
        self.assertEqual({u["why"] for u in r["unknowns"]}, {K("too-many-ops")})

    def test_no_read_is_unknown(self):
        h = History()
        write(h, 0, "accrue", 1, 5, "ok", 5)
        h.call(1, "stale-read", stale(2, 1), "ok", stale_ok(2, 1, 5, 10))
        self.check(h, K("unknown"))

    def test_malformed(self):
        h = History().call(0, "accrue", "{:member 1}", "ok")
        code, out, err = run(h, "register")
        self.assertEqual(code, 2)
        self.assertIn(":1:", err)
        h = History().call(0, "accrue", pts(1, 0), "ok")
        self.assertEqual(run(h, "register")[0], 2)
        h = History().call(0, "transfer", pts(1, 2), "ok")
        self.assertEqual(run(h, "register")[0], 2)

    def test_json(self):
        code, out, err = run(register_clean(), "register", "--json")
        self.assertEqual(code, 0, err)
        r = json.loads(out)
        self.assertIs(r["valid?"], True)
        self.assertIs(r["members"]["1"]["valid?"], True)

    def test_simulated_linearizable_histories(self):
        for seed in range(6):
            lines = simulate_register(seed)
            r = check.check_text("\n".join(lines) + "\n", "register")
            self.assertIs(r["valid?"], True, (seed, r["anomalies"]))
            # a read of a balance no prefix reaches
            i = max(j for j, x in enumerate(lines) if ":type :ok" in x and ":f :read" in x)
            lines[i] = re.sub(r":balances \{(\d+) (\d+)\}", r":balances {\1 99999}", lines[i])
            r = check.check_text("\n".join(lines) + "\n", "register")
            self.assertIs(r["valid?"], False, seed)


def simulate_register(seed, n_ops=400, procs=5, n_members=2, p_info=0.08):
    """A linearizable history: each op takes effect at a random point of its interval
    (an :info one maybe never, maybe long after it timed out), against a real counter;
    stale reads return one of the last few states with its write count as index."""
    rng = random.Random(seed)
    evs, free, pid = [], [0.0] * procs, list(range(procs))
    for n in range(n_ops):
        p = min(range(procs), key=lambda q: free[q])
        t0 = free[p] + rng.expovariate(1.0)
        t1 = t0 + rng.expovariate(2.0)
        f = rng.choice(["accrue"] * 4 + ["redeem"] * 2 + ["read"] * 3 + ["stale-read"])
        op = {"p": pid[p], "f": f, "m": rng.randrange(n_members), "k": rng.randint(1, 9),
              "info": f in ("accrue", "redeem") and rng.random() < p_info}
        at = t0 + rng.random() * (t1 - t0)
        if op["info"]:
            pid[p] += procs
            at = rng.choice([None, at, t1 + rng.expovariate(0.2)])
        evs.append((t0, 0, op))
        if at is not None:
            evs.append((at, 1, op))
        evs.append((t1, 2, op))
        free[p] = t1
    evs.sort(key=lambda e: e[:2])
    bal, past, writes = {}, {}, 0
    for _, kind, op in evs:
        m = op["m"]
        if kind != 1:
            continue
        s = bal.get(m, 0)
        if op["f"] == "accrue" or (op["f"] == "redeem" and s >= op["k"]):
            s += op["k"] if op["f"] == "accrue" else -op["k"]
            writes += 1
            past.setdefault(m, [(0, 0)]).append((writes, s))
            op["res"] = ("ok", s)
        elif op["f"] == "redeem":
            op["res"] = ("fail", s)
        elif op["f"] == "read":
            op["res"] = ("ok", s)
        else:
            hist = past.setdefault(m, [(0, 0)])
            op["res"] = ("ok", rng.choice(hist[-4:]))
        bal[m] = s
    h = History()
    for _, kind, op in evs:
        f, m, k = op["f"], op["m"], op["k"]
        v = pts(m, k) if f in ("accrue", "redeem") else \
            members(m) if f == "read" else stale(1, m)
        if kind == 0:
            h.invoke(op["p"], f, v)
        elif kind == 2 and op["info"]:
            h.complete(op["p"], f, "info", v)
        elif kind == 2:
            typ, res = op["res"]
            if f in ("accrue", "redeem"):
                h.complete(op["p"], f, typ, pts(m, k, res), SHORT if typ == "fail" else "")
            elif f == "read":
                h.complete(op["p"], f, typ, balances({m: res}))
            else:
                h.complete(op["p"], f, typ, stale_ok(1, m, res[1], res[0]))
    return h.lines


class OutputTest(unittest.TestCase):
    def test_edn_output_is_readable_edn(self):
        for h, w in ((bank_clean(), "bank"), (set_history("[0 1 1]"), "set"),
                     (idem_history("{3 24, 4 5}"), "idempotence"),
                     (redeem_history(), "redeem"), (register_clean(), "register")):
            code, out, err = run(h, w)
            r = check.loads_edn(out)
            self.assertIn(K("valid?"), r, w)

    def test_unknown_is_keyword_in_edn_and_string_in_json(self):
        h = History().call(0, "add", "0", "ok")
        code, out, err = run(h, "set")
        self.assertEqual(check.loads_edn(out)[K("valid?")], K("unknown"))
        code, out, err = run(h, "set", "--json")
        self.assertEqual(json.loads(out)["valid?"], "unknown")

    def test_usage_errors(self):
        p = subprocess.run([sys.executable, CHECK, "--workload", "nope", "x.edn"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        p = subprocess.run([sys.executable, CHECK, "--workload", "set", "/nonexistent.edn"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)

    def test_executable(self):
        self.assertTrue(os.access(CHECK, os.X_OK))


if __name__ == "__main__":
    unittest.main()
