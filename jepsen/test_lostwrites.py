#!/usr/bin/env python3
"""Tests for jepsen/lostwrites.c (the LD_PRELOAD recorder) and jepsen/lostwrites.py (cut).

Run from the repository root:  python3 jepsen/test_lostwrites.py
Needs cc (the library is built into a temporary directory); it fails without it.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "lostwrites.c")
sys.path.insert(0, HERE)
import lostwrites  # noqa: E402

CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-Wshadow",
          "-Wstrict-prototypes", "-Wmissing-prototypes", "-O2", "-fPIC", "-shared"]

_built = {}


def build_so():
    """Builds lostwrites.so once per test run; raises (the test fails) if it cannot."""
    if "so" not in _built:
        cc = shutil.which("cc")
        if cc is None:
            raise AssertionError("cc not found: cannot build jepsen/lostwrites.c")
        d = tempfile.mkdtemp(prefix="lostwrites-so-")
        so = os.path.join(d, "lostwrites.so")
        p = subprocess.run([cc] + CFLAGS + ["-o", so, SRC, "-ldl", "-lpthread"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise AssertionError("cc failed:\n" + p.stdout + p.stderr)
        _built["so"] = so
        _built["dir"] = d
    return _built["so"]


def tearDownModule():
    if "dir" in _built:
        shutil.rmtree(_built["dir"], ignore_errors=True)


def parse_log(path):
    """The records as tuples: ("size", n, path) or ("sync", path)."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("size "):
                _, n, p = line.split(" ", 2)
                out.append(("size", int(n), p))
            elif line.startswith("sync "):
                out.append(("sync", line[5:]))
            else:
                raise AssertionError("bad record line %r" % line)
    return out


def clean_env():
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "LOSTWRITES_ROOT", "LOSTWRITES_LOG"):
        env.pop(k, None)
    return env


class Dirs(unittest.TestCase):
    def setUp(self):
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="lostwrites-test-"))
        self.root = os.path.join(self.tmp, "root")
        self.other = os.path.join(self.tmp, "rootother")  # shares the root's prefix
        os.mkdir(self.root)
        os.mkdir(self.other)
        self.log = os.path.join(self.tmp, "records.log")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def r(self, name):
        return os.path.join(self.root, name)


class Recorder(Dirs):
    """The preload library, driven through small Python children (os.open & co call
    libc's open64/openat64/fsync/fdatasync/fcntl64/dup2/rename/unlink...)."""

    @classmethod
    def setUpClass(cls):
        cls.so = build_so()

    def child(self, code, preload=True, root=True, log=True, timeout=30, check=True):
        env = clean_env()
        if preload:
            env["LD_PRELOAD"] = self.so
        if root:
            env["LOSTWRITES_ROOT"] = self.root
        if log:
            env["LOSTWRITES_LOG"] = self.log
        prelude = ("import os, sys, threading\nROOT = %r\nOTHER = %r\n"
                   "def R(n):\n    return os.path.join(ROOT, n)\n"
                   "def mk(n, flags=0):\n"
                   "    return os.open(R(n), os.O_CREAT | os.O_RDWR | flags, 0o644)\n"
                   % (self.root, self.other))
        p = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                           env=env, capture_output=True, text=True, timeout=timeout,
                           cwd=self.tmp)
        if check:
            self.assertEqual(p.returncode, 0, "child failed:\n" + p.stdout + p.stderr)
        return p

    def records(self):
        return parse_log(self.log)

    def sizes(self, name):
        return [rec[1] for rec in self.records() if rec[0] == "size" and rec[2] == self.r(name)]

    # -- what gets recorded ------------------------------------------------------

    def test_new_file_baseline_fsync_and_unsynced_growth(self):
        self.child("""
            fd = mk("a")
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            os.write(fd, b"y" * 50)   # never synced
            os.close(fd)
        """)
        self.assertEqual(self.records(), [("size", 0, self.r("a")), ("size", 100, self.r("a"))])
        self.assertEqual(os.path.getsize(self.r("a")), 150)

    def test_fdatasync_records(self):
        self.child("""
            fd = mk("a")
            os.write(fd, b"x" * 10)
            os.fdatasync(fd)
            os.write(fd, b"x" * 10)
            os.fdatasync(fd)
            os.close(fd)
        """)
        self.assertEqual(self.sizes("a"), [0, 10, 20])

    def test_reopen_does_not_reset_baseline(self):
        self.child("""
            fd = mk("a")
            os.write(fd, b"x" * 100)
            os.close(fd)                       # closed without a sync
            fd = os.open(R("a"), os.O_RDWR | os.O_APPEND)  # still 0 bytes durable
            os.write(fd, b"x" * 10)
            os.close(fd)
            fd = os.open(R("a"), os.O_RDONLY)
            os.close(fd)
        """)
        self.assertEqual(self.records(), [("size", 0, self.r("a"))])
        # A new process takes what it finds as durable (its own baseline).
        self.child("""
            os.close(os.open(R("a"), os.O_RDONLY))
        """)
        self.assertEqual(self.sizes("a"), [0, 110])

    def test_existing_file_is_durable_and_trunc_is_zero(self):
        with open(self.r("old"), "wb") as f:
            f.write(b"o" * 300)
        with open(self.r("trunc"), "wb") as f:
            f.write(b"t" * 300)
        self.child("""
            os.close(os.open(R("old"), os.O_RDWR))
            os.close(os.open(R("trunc"), os.O_RDWR | os.O_TRUNC))
        """)
        self.assertEqual(self.sizes("old"), [300])
        self.assertEqual(self.sizes("trunc"), [0])

    def test_dsync_and_sync_flags(self):
        self.child("""
            for _ in range(2):
                fd = mk("d", os.O_DSYNC)
                os.write(fd, b"x" * 10)
                os.close(fd)
            fd = mk("s", os.O_SYNC)
            os.close(fd)
            fd = mk("plain")
            os.close(fd)
        """)
        recs = self.records()
        self.assertEqual(recs.count(("sync", self.r("d"))), 1)
        self.assertIn(("sync", self.r("s")), recs)
        self.assertNotIn(("sync", self.r("plain")), recs)
        self.assertEqual(self.sizes("d"), [0])

    def test_rename_carries_durable_size(self):
        self.child("""
            fd = mk("a")
            os.write(fd, b"x" * 10)
            os.fsync(fd)
            os.write(fd, b"y" * 20)
            os.close(fd)
            os.rename(R("a"), R("b"))
            fd = mk("v")                       # a victim replaced by os.replace
            os.write(fd, b"v" * 99)
            os.fsync(fd)
            os.close(fd)
            fd = mk("w")
            os.write(fd, b"w" * 5)
            os.fsync(fd)
            os.write(fd, b"w" * 5)
            os.close(fd)
            os.replace(R("w"), R("v"))
            fd = mk("ds", os.O_DSYNC)
            os.write(fd, b"d" * 7)
            os.close(fd)
            os.rename(R("ds"), R("ds2"))
            with open(os.path.join(OTHER, "in"), "wb") as f:   # moved in from outside
                f.write(b"i" * 33)
            os.rename(os.path.join(OTHER, "in"), R("in"))
            fd = mk("out")
            os.close(fd)
            os.rename(R("out"), os.path.join(OTHER, "out"))   # moved out: forgotten
        """)
        recs = self.records()
        self.assertEqual(self.sizes("b"), [10])
        self.assertEqual(self.sizes("v")[-1], 5)
        self.assertIn(("sync", self.r("ds2")), recs)
        self.assertEqual(self.sizes("in"), [33])
        self.assertFalse(any(self.other in rec[-1] for rec in recs), recs)
        actions = lostwrites.cut(self.log, random.Random(3), base=self.tmp)
        self.assertTrue(10 <= os.path.getsize(self.r("b")) <= 30)
        self.assertTrue(5 <= os.path.getsize(self.r("v")) <= 10)
        self.assertEqual(os.path.getsize(self.r("ds2")), 7)  # "sync": never cut
        self.assertEqual(os.path.getsize(self.r("in")), 33)
        self.assertEqual(len(actions), 2, actions)

    def test_directory_rename_moves_paths(self):
        os.mkdir(self.r("d1"))
        self.child("""
            fd = mk("d1/f")
            os.write(fd, b"x" * 40)
            os.fsync(fd)
            os.write(fd, b"x" * 40)
            os.rename(R("d1"), R("d2"))
            os.fsync(fd)                       # the open fd follows the new name
            os.close(fd)
        """)
        self.assertEqual(self.sizes("d2/f"), [40, 80])

    def test_relative_paths_openat_and_symlinks(self):
        os.mkdir(self.r("sub"))
        os.symlink(self.root, os.path.join(self.tmp, "link"))
        self.child("""
            os.chdir(ROOT)
            os.close(os.open("rel", os.O_CREAT | os.O_WRONLY, 0o644))
            d = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
            fd = os.open("at", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d)
            os.write(fd, b"x" * 3)
            os.fsync(fd)
            os.close(fd)
            os.rename("at", "at2", src_dir_fd=d, dst_dir_fd=d)
            os.close(d)
            os.close(os.open(os.path.join(os.path.dirname(ROOT), "link", "vialink"),
                             os.O_CREAT | os.O_WRONLY, 0o644))
        """)
        self.assertEqual(self.sizes("rel"), [0])
        self.assertEqual(self.sizes("sub/at"), [0, 3])
        self.assertEqual(self.sizes("sub/at2"), [3])
        self.assertEqual(self.sizes("vialink"), [0])

    def test_outside_root_not_logged(self):
        self.child("""
            for d in (OTHER, os.path.dirname(ROOT)):
                fd = os.open(os.path.join(d, "f"), os.O_CREAT | os.O_RDWR, 0o644)
                os.write(fd, b"x" * 10)
                os.fsync(fd)
                os.close(fd)
            os.close(os.open(ROOT, os.O_RDONLY))   # the directory itself: not a file
        """)
        self.assertEqual(self.records(), [])

    def test_unlink_forgets_the_path(self):
        self.child("""
            fd = mk("e")
            os.write(fd, b"x" * 10)
            os.fsync(fd)
            os.close(fd)
            os.unlink(R("e"))
            fd = mk("e")
            os.close(fd)
            fd = mk("g")
            os.remove(R("g"))
            os.write(fd, b"x")
            os.fsync(fd)                        # no name any more: nothing to log
            os.close(fd)
        """)
        self.assertEqual(self.sizes("e"), [0, 10, 0])
        self.assertEqual(self.sizes("g"), [0])

    def test_dup_dup2_and_fcntl_dupfd(self):
        self.child("""
            fd = mk("a")
            fd2 = os.dup(fd)                   # fcntl64(F_DUPFD_CLOEXEC)
            os.close(fd)
            os.write(fd2, b"x" * 10)
            os.fsync(fd2)
            os.dup2(fd2, 200)
            os.close(fd2)
            os.write(200, b"x" * 10)
            os.fdatasync(200)
            os.close(200)
            b = mk("b")
            os.dup2(b, 201)
            os.close(b)
            s = os.open(os.path.join(OTHER, "x"), os.O_CREAT | os.O_RDWR, 0o644)
            os.dup2(s, 201)                    # 201 now names an untracked file
            os.write(201, b"x")
            os.fsync(201)
        """)
        self.assertEqual(self.sizes("a"), [0, 10, 20])
        self.assertEqual(self.sizes("b"), [0])

    def test_sync_and_syncfs(self):
        self.child("""
            import ctypes
            fd = mk("a")
            os.write(fd, b"x" * 100)
            os.close(fd)
            os.sync()                          # covers closed files too
            fd = mk("b")
            os.write(fd, b"x" * 7)
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.syncfs(fd) == 0
            os.close(fd)
        """)
        self.assertEqual(self.sizes("a")[-1], 100)
        self.assertEqual(self.sizes("b")[-1], 7)

    def test_errno_is_preserved(self):
        self.child("""
            import ctypes, errno
            libc = ctypes.CDLL(None, use_errno=True)
            def expect(exc_errno, f, *a):
                try:
                    f(*a)
                except OSError as e:
                    assert e.errno == exc_errno, (f, e)
                else:
                    raise AssertionError("no error from %r" % (f,))
            expect(errno.ENOENT, os.open, R("missing"), os.O_RDONLY)
            expect(errno.EBADF, os.fsync, 999)
            expect(errno.EBADF, os.close, 999)
            expect(errno.EBADF, os.dup2, 999, 5)
            expect(errno.ENOENT, os.rename, R("missing"), R("x"))
            expect(errno.ENOENT, os.unlink, R("missing"))
            # Successful calls leave errno exactly as it was.
            fd = mk("a")
            for call in (lambda: libc.fsync(fd), lambda: libc.fdatasync(fd),
                         lambda: libc.rename(R("a").encode(), R("b").encode()),
                         lambda: libc.close(libc.open(R("b").encode(), 0)),
                         lambda: libc.close(libc.dup(fd))):
                ctypes.set_errno(4321)
                assert call() == 0, call
                assert ctypes.get_errno() == 4321, ctypes.get_errno()
            os.close(fd)
        """)

    def test_no_env_no_log_and_programs_work(self):
        code = """
            fd = mk("a")
            os.write(fd, b"x" * 10)
            os.fsync(fd)
            os.close(fd)
            os.rename(R("a"), R("b"))
            with open(R("b")) as f:
                print(f.read())
        """
        p = self.child(code, root=False, log=False)
        self.assertEqual(p.stdout, "x" * 10 + "\n")
        self.assertFalse(os.path.exists(self.log))
        p = self.child(code.replace('"b"', '"c"'), root=True, log=False)
        self.assertEqual(p.stdout, "x" * 10 + "\n")
        self.assertIn("lostwrites:", p.stderr)
        self.assertFalse(os.path.exists(self.log))
        for preload in (False, True):
            env = clean_env()
            if preload:
                env["LD_PRELOAD"] = self.so
            a = subprocess.run(["ls", "-a", "/"], env=env, capture_output=True, text=True)
            self.assertEqual(a.returncode, 0, a.stderr)
            self.assertEqual(a.stderr, "")
            env.update(LOSTWRITES_ROOT=self.root, LOSTWRITES_LOG=self.log)
            b = subprocess.run(["ls", "-a", "/"], env=env, capture_output=True, text=True)
            self.assertEqual(b.returncode, 0, b.stderr)
            self.assertEqual(a.stdout, b.stdout)

    def test_record_file_survives_the_program_closing_fds(self):
        self.child("""
            os.closerange(3, 4096)             # close_range(2): not intercepted
            for fd in range(3, 1024):          # close(2): the record file is kept
                try:
                    os.close(fd)
                except OSError:
                    pass
            fd = mk("a")
            os.write(fd, b"x" * 5)
            os.fsync(fd)
            os.close(fd)
        """)
        self.assertEqual(self.sizes("a"), [0, 5])

    def test_fork_and_subprocess(self):
        self.child("""
            import subprocess
            fd = mk("a")
            pid = os.fork()
            if pid == 0:
                c = mk("child")
                os.write(c, b"c" * 3)
                os.fsync(c)
                os.write(fd, b"x" * 4)
                os.fsync(fd)
                os._exit(0)
            assert os.waitpid(pid, 0)[1] == 0
            out = subprocess.run(["cat"], input=b"hi", stdout=subprocess.PIPE).stdout
            assert out == b"hi", out
            os.write(fd, b"x" * 4)
            os.fsync(fd)
        """)
        self.assertEqual(self.sizes("child"), [0, 3])
        self.assertEqual(self.sizes("a"), [0, 4, 8])

    def test_threads(self):
        self.child("""
            N, ITER = 8, 40
            shared = mk("shared")
            errors = []
            def writer(i):
                try:
                    fd = mk("t%d" % i)
                    for k in range(ITER):
                        os.write(fd, b"x" * 100)
                        (os.fsync if k % 2 else os.fdatasync)(fd)
                        os.write(shared, b"s" * 10)
                        os.fsync(shared)
                    os.close(fd)
                except Exception as e:
                    errors.append(e)
            def churn(i):
                try:
                    for k in range(200):
                        fd = mk("c%d" % i)
                        d = os.dup(fd)
                        os.close(fd)
                        os.close(d)
                        if k % 50 == 0:
                            os.rename(R("c%d" % i), R("c%d.%d" % (i, k)))
                except Exception as e:
                    errors.append(e)
            ts = [threading.Thread(target=writer, args=(i,)) for i in range(N)]
            ts += [threading.Thread(target=churn, args=(i,)) for i in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            os.fsync(shared)
            assert not errors, errors
        """, timeout=60)
        for i in range(8):
            self.assertEqual(self.sizes("t%d" % i), [100 * k for k in range(41)])
        shared = self.sizes("shared")
        self.assertEqual(shared[0], 0)
        self.assertEqual(shared[-1], 8 * 40 * 10)
        self.assertEqual(shared, sorted(shared))  # the sync started last wins

    def test_kill_then_cut(self):
        p = self.child("""
            import signal
            fd = mk("a")
            os.write(fd, bytes(range(256)) * 4)   # 1024 bytes
            os.fsync(fd)
            os.write(fd, b"u" * 9000)
            os.kill(os.getpid(), signal.SIGKILL)
        """, check=False)
        self.assertEqual(p.returncode, -signal.SIGKILL)
        actions = lostwrites.cut(self.log, random.Random(5), base=self.tmp)
        size = os.path.getsize(self.r("a"))
        self.assertTrue(1024 <= size <= 1024 + 4096, size)
        with open(self.r("a"), "rb") as f:
            self.assertEqual(f.read(1024), bytes(range(256)) * 4)
        self.assertEqual(len(actions), 1)
        self.assertTrue(actions[0].startswith("root/a: 10024 -> %d" % size), actions)
        # The next start logs the cut size as its baseline: cutting again does nothing.
        self.child("""
            os.close(os.open(R("a"), os.O_RDWR))
        """)
        self.assertEqual(lostwrites.cut(self.log, random.Random(5)), [])


class Cut(Dirs):
    """lostwrites.cut on hand-written record files."""

    def write_log(self, lines):
        with open(self.log, "w") as f:
            f.write("".join(line + "\n" for line in lines))

    def make(self, name, data):
        with open(self.r(name), "wb") as f:
            f.write(data)
        return self.r(name)

    @staticmethod
    def pattern(n):
        return bytes((i * 7 + 3) % 251 for i in range(n))

    def test_missing_log(self):
        self.assertEqual(lostwrites.cut(os.path.join(self.tmp, "nope"), random.Random(1)), [])

    def test_truncates_within_torn_window(self):
        orig = self.pattern(5000)
        seen_sizes = set()
        for seed in range(60):
            p = self.make("a", orig)
            self.write_log(["size 0 " + p, "size 100 " + p])
            actions = lostwrites.cut(self.log, random.Random(seed))
            with open(p, "rb") as f:
                got = f.read()
            s, t = 100, len(got) - 100
            self.assertTrue(0 <= t <= 4096, len(got))
            seen_sizes.add(len(got))
            self.assertEqual(got[:s], orig[:s])
            diff = [i for i in range(len(got)) if got[i] != orig[i]]
            if diff:
                self.assertGreaterEqual(diff[0], s)
                self.assertLess(diff[-1], s + t)
                self.assertLessEqual(diff[-1] - diff[0] + 1, 512)
            self.assertEqual(len(actions), 1)
            self.assertTrue(actions[0].startswith("%s: 5000 -> %d" % (p, len(got))), actions)
            if t > 0:
                self.assertIn("(+%d torn" % t, actions[0])
        self.assertGreater(len(seen_sizes), 30)

    def test_small_unsynced_and_torn_max(self):
        counts = {}
        for seed in range(40):
            p = self.make("a", b"z" * 101)
            self.write_log(["size 100 " + p])
            lostwrites.cut(self.log, random.Random(seed))
            n = os.path.getsize(p)
            counts[n] = counts.get(n, 0) + 1
        self.assertEqual(set(counts), {100, 101})  # both t = 0 and t = 1 happen
        p = self.make("a", b"z" * 1000)
        self.write_log(["size 0 " + p])
        lostwrites.cut(self.log, random.Random(9), torn_max=10)
        self.assertLessEqual(os.path.getsize(p), 10)

    def test_untouched_files(self):
        same = self.make("same", b"s" * 50)
        smaller = self.make("smaller", b"s" * 50)
        synced = self.make("synced", b"s" * 5000)
        unknown = self.make("unknown", b"s" * 5000)
        gone = self.r("gone")
        self.write_log(["size 50 " + same, "size 80 " + smaller, "size 0 " + synced,
                        "sync " + synced, "size 3 " + gone, "garbage line", "size x /y",
                        "size 0 relative/path"])
        self.assertEqual(lostwrites.cut(self.log, random.Random(1)), [])
        for path, want in ((same, b"s" * 50), (smaller, b"s" * 50), (synced, b"s" * 5000),
                           (unknown, b"s" * 5000)):
            with open(path, "rb") as f:
                self.assertEqual(f.read(), want)
        self.assertFalse(os.path.exists(gone))

    def test_last_size_record_wins(self):
        p = self.make("a", b"a" * 300)
        self.write_log(["size 10 " + p, "size 300 " + p])
        self.assertEqual(lostwrites.cut(self.log, random.Random(1)), [])
        self.write_log(["size 300 " + p, "size 10 " + p])
        self.assertEqual(len(lostwrites.cut(self.log, random.Random(1))), 1)
        self.assertLessEqual(os.path.getsize(p), 300)

    def test_paths_with_spaces_and_base(self):
        os.makedirs(self.r("n1/data dir"))
        p = self.make("n1/data dir/x y", b"q" * 2000)
        self.write_log(["size 1000 " + p])
        actions = lostwrites.cut(self.log, random.Random(2), base=self.root)
        self.assertEqual(len(actions), 1)
        self.assertTrue(actions[0].startswith("n1/data dir/x y: 2000 -> "), actions)

    def test_deterministic(self):
        results = []
        for run in range(2):
            base = os.path.join(self.tmp, "run%d" % run)
            os.makedirs(os.path.join(base, "n1"))
            lines = []
            for i in range(5):
                p = os.path.join(base, "n1", "f%d" % i)
                with open(p, "wb") as f:
                    f.write(self.pattern(3000 + 1000 * i))
                lines.append("size %d %s" % (100 * i, p))
            with open(self.log, "w") as f:
                f.write("\n".join(lines) + "\n")
            actions = lostwrites.cut(self.log, random.Random(42), base=base)
            data = []
            for i in range(5):
                with open(os.path.join(base, "n1", "f%d" % i), "rb") as f:
                    data.append(f.read())
            results.append((actions, data))
        self.assertEqual(results[0], results[1])
        self.assertEqual(len(results[0][0]), 5)


if __name__ == "__main__":
    unittest.main()
