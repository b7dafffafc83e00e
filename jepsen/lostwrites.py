"""Lost unsynced writes: cut files back to what was durable (Python 3, stdlib only).

jepsen/lostwrites.c, preloaded into a node, appends records to a log:

    size <bytes> <path>    the durable size of <path> is now <bytes>
    sync <path>            <path> was opened O_SYNC/O_DSYNC: every write is durable

After the node is SIGKILLed, cut() plays the OS crash the kill did not cause: every
file that grew past its durable size (its last "size" record) is truncated to that
size plus a random torn tail of at most torn_max bytes, and a random sub-range of the
tail (at most one 512-byte sector) is overwritten with random bytes.  "sync" files,
files without a "size" record and files that no longer exist are left alone, and a
file is never grown or cut below its durable size.

The log is left in place: the next start of the node logs a fresh baseline (the size
after the cut) for every file it opens, so the last record per path stays right.
"""

import os
import stat

SECTOR = 512


def read_log(log_path):
    """Returns ({path: last durable size}, {paths with a sync record}).

    A missing log gives two empty results; malformed lines are ignored."""
    sizes, synced = {}, set()
    try:
        with open(log_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return sizes, synced
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        if line.startswith("size "):
            parts = line.split(" ", 2)
            if len(parts) != 3 or not parts[2].startswith("/"):
                continue
            try:
                n = int(parts[1])
            except ValueError:
                continue
            if n >= 0:
                sizes[parts[2]] = n
        elif line.startswith("sync "):
            path = line[5:]
            if path.startswith("/"):
                synced.add(path)
    return sizes, synced


def _randbytes(rng, n):
    if hasattr(rng, "randbytes"):
        return rng.randbytes(n)
    return bytes(rng.getrandbits(8) for _ in range(n))


def cut(log_path, rng, base=None, torn_max=4096):
    """Cuts every file in the log at log_path back to its durable size plus a torn tail.

    rng is a random.Random (the result depends only on it and the files); base, when
    given, is the directory the paths in the returned action strings are relative to.
    Returns a list of strings, one per file changed, e.g.
    "n1/data/ledger/data.mdb: 1048576 -> 4219 (+123 torn, 77 bytes garbled at 4100)".
    """
    sizes, synced = read_log(log_path)
    real_base = os.path.realpath(base) if base is not None else None
    actions = []
    for path in sorted(sizes):
        if path in synced:
            continue
        durable = sizes[path]
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        cur = st.st_size
        if cur <= durable:
            continue
        unsynced = cur - durable
        torn = rng.randrange(0, min(unsynced, torn_max) + 1)
        new_size = durable + torn
        garble = ""
        with open(path, "r+b") as f:
            f.truncate(new_size)
            if torn > 0:
                n = rng.randrange(1, min(torn, SECTOR) + 1)
                at = durable + rng.randrange(0, torn - n + 1)
                f.seek(at)
                f.write(_randbytes(rng, n))
                garble = ", %d bytes garbled at %d" % (n, at)
        name = os.path.relpath(path, real_base) if real_base is not None else path
        if torn > 0:
            actions.append("%s: %d -> %d (+%d torn%s)" % (name, cur, new_size, torn, garble))
        else:
            actions.append("%s: %d -> %d" % (name, cur, new_size))
    return actions
