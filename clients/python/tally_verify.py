#!/usr/bin/python3
"""tally_verify — an independent verifier of a tally-audit directory, in Python.

It shares no code with Tally: it reads the directory as README "Auditing" describes
it, with the protobuf classes protoc generates from proto/tally.proto (Debian's
python3-protobuf) and Ed25519 from python3-cryptography, and checks:

  - every checkpoint's Ed25519 signature over its canonical text, by the key pinned
    for its node;
  - the RFC 9162 consistency proof each checkpoint carries from an earlier one;
  - every leaf, SHA-256(0x00 || entry bytes), and the Merkle root at every
    checkpoint's tree size;
  - dense sequence numbers (each entry decodes and says it is the next one);
  - the postings of every entry summing to zero per brand.

Usage: tally_verify.py DIR --keys FILE      (PYTHONPATH must reach tally_pb2.py:
       make builds it into build/rel/python)
Exit 0 when everything holds; 1 with the first problem named on stderr; 2 usage.
"""

import hashlib
import json
import os
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import tally_pb2

ENTRIES_PER_FILE = 65536


class Failed(Exception):
    pass


def sha256(data):
    return hashlib.sha256(data).digest()


def leaf_hash(data):
    return sha256(b"\x00" + data)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


class Frontier:
    """The right edge of an append-only Merkle tree: one peak per set bit of its size."""

    def __init__(self):
        self.size = 0
        self.peaks = []  # (height, hash), highest first

    def append(self, leaf):
        h, height = leaf, 0
        while self.peaks and self.peaks[-1][0] == height:
            h = node_hash(self.peaks.pop()[1], h)
            height += 1
        self.peaks.append((height, h))
        self.size += 1

    def root(self):
        if not self.peaks:
            return sha256(b"")
        h = self.peaks[-1][1]
        for _, peak in reversed(self.peaks[:-1]):
            h = node_hash(peak, h)
        return h


def verify_consistency(first, second, first_hash, second_hash, proof):
    """RFC 9162 section 2.1.4.2."""
    if first == second:
        return not proof and first_hash == second_hash
    if first == 0 or first > second or not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_hash] + proof
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_hash and sr == second_hash


def canonical_text(cp):
    return ("tally-checkpoint v1\nnode %d\ntree_size %d\nroot %s\nstate_digest %s\n"
            "applied_index %d\ntime_ms %d\n" % (cp["node_id"], cp["tree_size"], cp["root"],
                                                cp["state_digest"], cp["applied_index"],
                                                cp["time_ms"])).encode()


def load_keys(path):
    keys = {}
    with open(path) as f:
        for no, line in enumerate(f, 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            if len(line) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", line[1]):
                raise Failed("%s:%d: expected \"<node id> <64 hex digits>\"" % (path, no))
            keys.setdefault(int(line[0]), set()).add(line[1].lower())
    return keys


def load_checkpoints(d, keys):
    cps = []
    folder = os.path.join(d, "checkpoints")
    for name in os.listdir(folder):
        if not re.fullmatch(r"\d+\.json", name):
            continue
        with open(os.path.join(folder, name)) as f:
            cp = json.load(f)
        cp["file"] = "checkpoints/" + name
        if cp.get("format") != "tally-checkpoint v1" or cp["tree_size"] != int(name[:-5]):
            raise Failed("%s: not a checkpoint of that size" % cp["file"])
        if cp["public_key"].lower() not in keys.get(cp["node_id"], ()):
            raise Failed("%s: node %d's key is not the pinned one" % (cp["file"], cp["node_id"]))
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(cp["public_key"])).verify(
                bytes.fromhex(cp["signature"]), canonical_text(cp))
        except (InvalidSignature, ValueError):
            raise Failed("%s: the signature does not verify" % cp["file"])
        cps.append(cp)
    if not cps:
        raise Failed("%s: no checkpoint to verify against" % folder)
    cps.sort(key=lambda c: c["tree_size"])
    by_size = {c["tree_size"]: c for c in cps}
    for cp in cps:
        if "consistency_from" not in cp:
            continue
        old = by_size.get(cp["consistency_from"])
        if old is None:
            raise Failed("%s: its proof starts at %d, and there is no checkpoint of that size"
                         % (cp["file"], cp["consistency_from"]))
        proof = [bytes.fromhex(h) for h in cp.get("consistency", [])]
        if not verify_consistency(old["tree_size"], cp["tree_size"], bytes.fromhex(old["root"]),
                                  bytes.fromhex(cp["root"]), proof):
            raise Failed("%s does not extend %s: the two are of different histories"
                         % (cp["file"], old["file"]))
    return cps


def records(d):
    """(seq, bytes) of every entry, in order, from the journal files."""
    folder = os.path.join(d, "journal")
    files = sorted(int(n.split(".")[0]) for n in os.listdir(folder)
                   if re.fullmatch(r"\d{16}\.journal", n))
    seq = 1
    for k, first in enumerate(files):
        if first != k * ENTRIES_PER_FILE + 1:
            raise Failed("journal file %016d.journal: expected %016d.journal"
                         % (first, k * ENTRIES_PER_FILE + 1))
        with open(os.path.join(folder, "%016d.journal" % first), "rb") as f:
            data = f.read()
        at, held = 0, 0
        while at < len(data):
            if at + 4 > len(data):
                raise Failed("entry %d: a torn record" % seq)
            n = struct.unpack(">I", data[at:at + 4])[0]
            if n == 0 or at + 4 + n > len(data):
                raise Failed("entry %d: a torn or malformed record" % seq)
            yield seq, data[at + 4:at + 4 + n]
            at, held, seq = at + 4 + n, held + 1, seq + 1
        if held != ENTRIES_PER_FILE and k + 1 < len(files):
            raise Failed("journal file %016d.journal holds %d entries and is not the last"
                         % (first, held))


def check_entry(seq, data):
    e = tally_pb2.Entry()
    try:
        e.ParseFromString(data)
    except Exception:
        raise Failed("entry %d: its bytes do not decode as an Entry" % seq)
    if e.seq != seq:
        raise Failed("entry %d of the journal says it is entry %d" % (seq, e.seq))
    sums = {}
    for p in e.postings:
        sums[p.brand] = sums.get(p.brand, 0) + p.points
    for brand, total in sums.items():
        if total != 0:
            raise Failed("entry %d: the postings in brand %s sum to %d" % (seq, brand, total))
    return len(e.postings)


def verify(d, keys_path):
    cps = load_checkpoints(d, load_keys(keys_path))
    tree, postings, next_cp = Frontier(), 0, 0
    for seq, data in records(d):
        tree.append(leaf_hash(data))
        postings += check_entry(seq, data)
        while next_cp < len(cps) and cps[next_cp]["tree_size"] == tree.size:
            if tree.root().hex() != cps[next_cp]["root"].lower():
                raise Failed("the journal's root at %d is not %s's"
                             % (tree.size, cps[next_cp]["file"]))
            next_cp += 1
    if next_cp < len(cps):
        raise Failed("%s covers %d entries; the journal holds %d"
                     % (cps[next_cp]["file"], cps[next_cp]["tree_size"], tree.size))
    return {"verified": True, "entries": tree.size, "postings": postings,
            "checkpoints": len(cps), "root": tree.root().hex()}


def main(argv):
    if len(argv) != 4 or argv[2] != "--keys":
        print(__doc__.split("\n\n")[-2], file=sys.stderr)
        return 2
    try:
        print(json.dumps(verify(argv[1], argv[3])))
        return 0
    except Failed as e:
        print("tally_verify: FAILED: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
