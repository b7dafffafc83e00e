#!/usr/bin/env python3
"""Hostile peers against a real TLS cluster (tools/tally-cluster, three tallyd).

Each probe attacks a node's raft port as someone who can reach it would, then checks
that the node refused it (its log names the reason), that every node is still up, that
nothing acknowledged changed and that the replicas are equal; a write after the probe
must still succeed.

Run: python3 tests/test_hostile.py   (after make; TALLY_BUILD picks another build)
"""

import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
import unittest

from localcluster import BUILD, TALLYCTL, start, stop

CERTS = os.path.join(BUILD, "tools", "tally-certs")
# The raft transport's preamble (consensus/tlsnet.c): "TLYR" and its version.
PREAMBLE_MAGIC = 0x544C5952
PREAMBLE_VERSION = 2
# How long a node may take to answer a refused peer by closing (a hang is a failure).
PEER_WAIT_S = 30


def raft_forgery(claimed_id, address):
    """canonical raft's plaintext handshake (protocol 1, id, address) followed by an
    AppendEntries-shaped message: what a script posing as node `claimed_id` sends."""
    addr = address.encode() + b"\0"
    addr += b"\0" * (-len(addr) % 8)
    hello = struct.pack("<QQQ", 1, claimed_id, len(addr)) + addr
    # message header: type 1 (append entries), a body of one forged entry
    body = struct.pack("<QQQQQ", 99, 1, 0, 0, 1) + b"\x01" * 64
    return hello + struct.pack("<II", 1, len(body)) + body


def raft_message(msg_type, fields, payload=b""):
    """One raft message as Tally's TLS transport carries it (consensus/raftwire.h, all
    little endian): type and header length (u32 each), payload length (u64), the
    header's u64 fields, then the payload."""
    header = b"".join(struct.pack("<Q", f) for f in fields)
    return struct.pack("<IIQ", msg_type, len(header), len(payload)) + header + payload


def append_entries(term, prev_index, prev_term, commit, entry_terms):
    """One AppendEntries: term, previous index and term, leader commit, entry count,
    then per entry its term, type and size; each entry's data (here 64 bytes of a
    command nobody wrote) is the payload."""
    fields = [term, prev_index, prev_term, commit, len(entry_terms)]
    for t in entry_terms:
        fields += [t, 1, 64]  # RAFT_COMMAND, 64 bytes
    return raft_message(1, fields, b"\x2a" * 64 * len(entry_terms))


def pb_varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def pb_field(number, value):
    """One protobuf field: an int as a varint, bytes or str length-delimited."""
    if isinstance(value, int):
        return pb_varint(number << 3) + pb_varint(value)
    if isinstance(value, str):
        value = value.encode()
    return pb_varint(number << 3 | 2) + pb_varint(len(value)) + value


def pb_call_id(request):
    """A Request's call_id (field 1, a varint: the first field the client writes)."""
    if not request or request[0] != 0x08:
        return 0
    n, shift = 0, 0
    for b in request[1:]:
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n
    return 0


def read_frame(sock):
    """One frame (4-byte big-endian length, then the bytes); None when closed."""
    def exactly(k):
        got = b""
        while len(got) < k:
            chunk = sock.recv(k - len(got))
            if not chunk:
                return None
            got += chunk
        return got
    head = exactly(4)
    return None if head is None else exactly(struct.unpack(">I", head)[0])


def tls_listener(cert, key):
    """A TLS server socket on a free loopback port, and its context."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    return ctx, listener


def serve_until(listener, done, handle):
    """Accepts connections and hands each to handle(conn) until done is set."""
    while not done.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        try:
            conn.settimeout(PEER_WAIT_S)
            handle(conn)
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()


class HostileRaftPeers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir, cls.base, cls.env = start("tally-hostile-")
        cls.ctl_ok(["brand", "create", "--id", "acme", "--name", "Acme"])
        cls.ctl_ok(["member", "open", "--id", "m1"])
        cls.ctl_ok(["accrue", "--brand", "acme", "--member", "m1", "--points", "1000"])

    @classmethod
    def tearDownClass(cls):
        stop(cls.dir, cls.env)

    @classmethod
    def ctl(cls, args, cluster=None):
        env = dict(cls.env)
        if cluster:
            env["TALLY_CLUSTER"] = cluster
        p = subprocess.run([TALLYCTL, "--json", "--key", "admin"] + args,
                           env=env, capture_output=True, text=True)
        return p.returncode, p.stdout + p.stderr

    @classmethod
    def ctl_ok(cls, args, cluster=None):
        rc, out = cls.ctl(args, cluster)
        assert rc == 0, "tallyctl %s: exit %d: %s" % (" ".join(args), rc, out)
        return json.loads(out.strip().splitlines()[-1])

    def raft_port(self, i):
        return self.base + i

    def log(self, i):
        with open(os.path.join(self.dir, "node%d.log" % i)) as f:
            return f.read()

    def wait_refused(self, i, before, needle):
        """The node logged a refusal containing needle after `before` bytes of its log."""
        deadline = time.monotonic() + PEER_WAIT_S
        while time.monotonic() < deadline:
            tail = self.log(i)[before:]
            if "refused" in tail and needle in tail:
                return tail
            time.sleep(0.05)
        self.fail("node %d logged no refusal with %r; log tail:\n%s" % (i, needle, self.log(i)[before:]))

    def assert_closed_without_answer(self, sock):
        """The node answers a refused peer with nothing it could use and closes."""
        sock.settimeout(PEER_WAIT_S)
        got = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, ssl.SSLError, OSError):
            pass
        self.assertNotIn(b"tally", got.lower())
        sock.close()

    def assert_cluster_intact(self, balance=1000):
        for i in (1, 2, 3):
            with open(os.path.join(self.dir, "node%d.pid" % i)) as f:
                os.kill(int(f.read()), 0)  # raises if the node is gone
        b = self.ctl_ok(["balance", "--brand", "acme", "--member", "m1"])
        self.assertEqual(b["available"], balance)
        self.ctl_ok(["accrue", "--brand", "acme", "--member", "m1", "--points", "1"])
        self.ctl_ok(["redeem", "--brand", "acme", "--member", "m1", "--points", "1"])
        want = self.ctl_ok(["digest"])
        for i in (1, 2, 3):
            client = "127.0.0.1:%d" % (self.base + 100 + i)
            deadline = time.monotonic() + PEER_WAIT_S
            while True:
                got = self.ctl_ok(["digest", "--stale"], cluster=client)
                if got["tree_size"] >= want["tree_size"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(got["root"], want["root"], "node %d" % i)
            self.assertEqual(got["state_digest"], want["state_digest"], "node %d" % i)

    def tls_context(self, certs_dir, node):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who answers
        if node is not None:
            ctx.load_cert_chain(os.path.join(certs_dir, "node-%d.pem" % node),
                                os.path.join(certs_dir, "node-%d.key" % node))
        return ctx

    def tls_probe(self, certs_dir, node, claimed_id):
        """A TLS connection presenting certs_dir's node-`node` certificate (none when node
        is None) that then claims to be `claimed_id` in Tally's preamble."""
        raw = socket.create_connection(("127.0.0.1", self.raft_port(1)))
        try:
            s = self.tls_context(certs_dir, node).wrap_socket(raw)
            addr = ("127.0.0.1:%d|127.0.0.1:%d" % (self.raft_port(claimed_id),
                                                  self.base + 100 + claimed_id)).encode()
            s.sendall(struct.pack(">IBQB", PREAMBLE_MAGIC, PREAMBLE_VERSION, claimed_id, len(addr)) + addr +
                      raft_forgery(claimed_id, "x")[24:])
            return s
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return raw  # refused during the handshake

    def test_a_plaintext_raft_forgery_is_refused(self):
        before = len(self.log(1))
        s = socket.create_connection(("127.0.0.1", self.raft_port(1)))
        s.sendall(raft_forgery(2, "127.0.0.1:%d" % self.raft_port(2)))
        self.assert_closed_without_answer(s)
        self.wait_refused(1, before, "TLS handshake")
        self.assert_cluster_intact()

    def test_a_peer_without_a_certificate_is_refused(self):
        before = len(self.log(1))
        self.assert_closed_without_answer(self.tls_probe(None, None, 2))
        self.wait_refused(1, before, "certificate")
        self.assert_cluster_intact()

    def test_a_certificate_of_another_ca_is_refused(self):
        other = os.path.join(self.dir, "foreign-certs")
        subprocess.run([CERTS, "init", "--dir", other, "--nodes", "2"], check=True,
                       stdout=subprocess.DEVNULL)
        before = len(self.log(1))
        self.assert_closed_without_answer(self.tls_probe(other, 2, 2))
        self.wait_refused(1, before, "certificate")
        self.assert_cluster_intact()

    def test_a_node_certificate_cannot_speak_for_another_id(self):
        before = len(self.log(1))
        certs = os.path.join(self.dir, "certs")
        self.assert_closed_without_answer(self.tls_probe(certs, 3, 2))
        tail = self.wait_refused(1, before, "claims node 2")
        self.assertIn("certificate names node 3", tail)
        self.assert_cluster_intact()

    def raft_session_as_node_2(self):
        """A TLS session to node 1's raft port with node 2's own certificate, past the
        transport's handshake: what an insider holding node 2's key can open."""
        certs = os.path.join(self.dir, "certs")
        raw = socket.create_connection(("127.0.0.1", self.raft_port(1)))
        s = self.tls_context(certs, 2).wrap_socket(raw)
        addr = ("127.0.0.1:%d|127.0.0.1:%d" % (self.raft_port(2), self.base + 102)).encode()
        s.sendall(struct.pack(">IBQB", PREAMBLE_MAGIC, PREAMBLE_VERSION, 2, len(addr)) + addr)
        return s

    def test_an_insider_contradicting_committed_entries_is_refused(self):
        """Whoever holds node 2's key speaks for node 2 (raft trusts its members), but a
        message that contradicts entries node 1 knows are committed cannot be from a
        correct leader: node 1 refuses it and keeps serving, its term untouched."""
        s = self.raft_session_as_node_2()
        before = len(self.log(1))
        refused = self.metric(1, "tally_raft_messages_refused_total")
        # index 1 (the cluster's first configuration, term 1) is committed everywhere:
        # a previous entry of another term, then entries rewriting indexes 1 and 2.
        s.sendall(append_entries(1000, 1, 77, 5, [1000]))
        self.wait_refused(1, before, "entry 1 contradicts a committed one")
        s.sendall(append_entries(1000, 0, 0, 5, [1000, 1000]))
        deadline = time.monotonic() + PEER_WAIT_S
        while self.metric(1, "tally_raft_messages_refused_total") < refused + 2:
            self.assertLess(time.monotonic(), deadline, "node 1 did not refuse both")
            time.sleep(0.05)
        s.close()
        self.assert_cluster_intact()
        status = self.ctl_ok(["status"], cluster="127.0.0.1:%d" % self.client_port(1))
        self.assertLess(status.get("term", 0), 1000, status)

    def test_a_deposed_leaders_late_message_is_not_taken_for_a_lie(self):
        """A leader deposed while its AppendEntries was on the way sends entries it never
        got committed, at indexes the new leader may have committed others at. Its term
        is behind: raft rejects it on that alone, and node 1 neither counts nor logs it
        as a faulty sender's. Sent ahead of a real contradiction on the same
        connection, it is handled first: once the lie is logged, the late message has
        been seen, and it left no refusal."""
        term = self.ctl_ok(["status"], cluster="127.0.0.1:%d" % self.client_port(1))["term"]
        self.assertGreaterEqual(term, 2, "a cluster that elected a leader is past term 1")
        s = self.raft_session_as_node_2()
        before = len(self.log(1))
        refused = self.metric(1, "tally_raft_messages_refused_total")
        # entries 1 (the first configuration) and 2 (the first leader's barrier) are
        # committed: the late message contradicts entry 1 under term - 1, the lie entry 2.
        s.sendall(append_entries(term - 1, 1, 77, 5, []))
        s.sendall(append_entries(1000, 2, 77, 5, []))
        tail = self.wait_refused(1, before, "entry 2 contradicts a committed one")
        s.close()
        self.assertNotIn("entry 1 contradicts", tail)
        self.assertEqual(tail.count("refused"), 1, tail)
        self.assertEqual(self.metric(1, "tally_raft_messages_refused_total"), refused + 1)
        self.assert_cluster_intact()

    def test_an_insiders_malformed_messages_are_refused(self):
        """Messages that do not decode (an unknown type, a header of the wrong size, a
        payload that does not match its entries, an entry of no known type, a payload
        past the limit) end the connection with the reason logged; nothing reaches
        raft, and the cluster goes on."""
        probes = [
            (raft_message(9, [1, 2, 3]), "unknown raft message type"),
            (raft_message(2, [1, 2]), "wrong size for its type"),
            (raft_message(1, [5, 1, 1, 0, 1, 5, 1, 64], b"\x2a" * 60),
             "entries do not match the payload"),
            (raft_message(1, [5, 1, 1, 0, 1, 5, 7, 8], b"\x2a" * 8), "unknown entry type"),
            (struct.pack("<IIQ", 5, 48, 1 << 40), "payload too large"),
        ]
        for message, reason in probes:
            s = self.raft_session_as_node_2()
            before = len(self.log(1))
            s.sendall(message)
            self.wait_refused(1, before, reason)
            self.assert_closed_without_answer(s)
        self.assert_cluster_intact()

    # ---- the client port, before login ------------------------------------------

    def client_port(self, i):
        return self.base + 100 + i

    def node_pid(self, i):
        with open(os.path.join(self.dir, "node%d.pid" % i)) as f:
            return int(f.read())

    def rss_kb(self, i):
        with open("/proc/%d/status" % self.node_pid(i)) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def answer_before_close(self, sock):
        """Everything the node sends until it closes the connection."""
        sock.settimeout(PEER_WAIT_S)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            except socket.timeout:
                sock.close()
                self.fail("the node kept a connection open for %d s" % PEER_WAIT_S)
            if not chunk:
                break
            got += chunk
        sock.close()
        return got

    def client_tls(self, i):
        """A TLS connection to node i's client port, the node verified against the
        cluster's CA as a client does; None when the node refuses the handshake."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(os.path.join(self.dir, "certs", "ca.pem"))
        raw = socket.create_connection(("127.0.0.1", self.client_port(i)))
        try:
            return ctx.wrap_socket(raw)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError):
            raw.close()
            return None

    def test_a_plaintext_client_is_refused(self):
        s = socket.create_connection(("127.0.0.1", self.client_port(1)))
        hello = b"\x0a\x05admin"  # a Hello's bytes, in the clear
        s.sendall(struct.pack(">I", len(hello)) + hello)
        self.assertNotIn(b"admin", self.answer_before_close(s))
        self.assert_cluster_intact()

    def test_a_large_frame_before_login_is_refused_unread(self):
        s = self.client_tls(1)
        # 4 MiB announced: two million empty commands would fit in it
        s.sendall(struct.pack(">I", 4 << 20) + b"\x22\x00" * 1024)
        got = self.answer_before_close(s)
        self.assertIn(b"before the handshake completes", got)
        self.assert_cluster_intact()

    def test_half_sent_frames_before_login_hold_no_memory(self):
        conns, announced = 200, 4 << 20
        before = self.rss_kb(1)
        socks = []
        for _ in range(conns):
            s = self.client_tls(1)
            s.sendall(struct.pack(">I", announced) + b"\x00" * 512)  # the rest never comes
            socks.append(s)
        for s in socks:
            self.assertIn(b"before the handshake completes", self.answer_before_close(s))
        grown = self.rss_kb(1) - before
        # A node that reserved the frames it was promised would grow by conns x 4 MiB
        # (800 MiB); one that reserved a quarter of each, by 200 MiB. The bound is that
        # quarter, not a guess at the node's own noise: a release build grew by ~1 MiB
        # here, a SANITIZE one by up to 68 MiB (ASan keeps freed memory in quarantine,
        # and 200 TLS handshakes free a lot).
        self.assertLess(grown, conns * announced // 4 // 1024, "node 1 grew by %d KiB" % grown)
        self.assert_cluster_intact()

    def metric(self, i, name):
        for line in self.http_get(i, "/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
        self.fail("node %d has no metric %s" % (i, name))

    def test_connections_from_one_address_are_capped(self):
        before = self.metric(1, "tally_connections_refused_total")
        # 300 connections at once (plain TCP: a loopback connect takes microseconds, far
        # inside the 5 s any accepted one is given); the cap is 256 per address, and
        # every client here is 127.0.0.1, the other nodes' clock probes included.
        socks = [socket.create_connection(("127.0.0.1", self.client_port(1))) for _ in range(300)]
        try:
            # Each one is ended by the node: refused at once, or at the handshake
            # deadline since none ever starts TLS.
            for s in socks:
                self.answer_before_close(s)
        finally:
            for s in socks:
                s.close()
        refused = self.metric(1, "tally_connections_refused_total") - before
        self.assertGreaterEqual(refused, 300 - 256)
        self.assertLessEqual(refused, 300)
        self.assert_cluster_intact()

    def foreign_listener(self):
        """A TLS server with a node certificate of another CA: where a forged redirect or
        a wrong address would lead. Returns (listener, what it received, stop)."""
        other = os.path.join(self.dir, "foreign-ca")
        if not os.path.exists(other):
            subprocess.run([CERTS, "init", "--dir", other, "--nodes", "1"], check=True,
                           stdout=subprocess.DEVNULL)
        ctx, listener = tls_listener(os.path.join(other, "node-1.pem"),
                                     os.path.join(other, "node-1.key"))
        got, done = [], threading.Event()

        def handle(conn):
            with ctx.wrap_socket(conn, server_side=True) as t:
                got.append(t.recv(4096))

        th = threading.Thread(target=serve_until, args=(listener, done, handle))
        th.start()

        def stop():
            done.set()
            th.join()
            listener.close()
        return listener, got, stop

    def test_a_client_talks_only_to_nodes_of_the_cluster(self):
        """A server with another CA's certificate: the client refuses it before sending
        anything."""
        listener, got, stop = self.foreign_listener()
        rc, out = self.ctl(["status"], cluster="127.0.0.1:%d" % listener.getsockname()[1])
        stop()
        self.assertEqual(rc, 3, out)  # not applied: no node of the cluster answered
        self.assertEqual(got, [])    # the impostor never got the key's Hello

    def test_a_redirect_to_a_foreign_address_is_not_followed(self):
        """A member (node 3's certificate: a broken or stolen node) that logs the client
        in without checking its proof and answers every request NOT_LEADER, pointing
        at a foreign server. The client follows the redirect only as far as the TLS
        handshake, which the foreign server fails: it never gets the key's Hello, and
        the write ends not applied."""
        foreign, foreign_got, stop_foreign = self.foreign_listener()
        certs = os.path.join(self.dir, "certs")
        ctx, fake = tls_listener(os.path.join(certs, "node-3.pem"),
                                 os.path.join(certs, "node-3.key"))
        hint = "127.0.0.1:%d" % foreign.getsockname()[1]
        redirected, done = [], threading.Event()

        def answer(t, call_id, *fields):
            body = pb_field(1, call_id) + b"".join(fields)
            t.sendall(struct.pack(">I", len(body)) + body)

        def handle(conn):
            with ctx.wrap_socket(conn, server_side=True) as t:
                hello = read_frame(t)
                answer(t, pb_call_id(hello), pb_field(2, 1),             # OK
                       pb_field(5, pb_field(1, b"\x07" * 32)))           # Challenge
                proof = read_frame(t)
                answer(t, pb_call_id(proof), pb_field(2, 1),
                       pb_field(6, pb_field(1, 1) + pb_field(3, 3)))     # Welcome: admin
                while True:
                    req = read_frame(t)
                    if req is None:
                        return
                    redirected.append(req)
                    answer(t, pb_call_id(req), pb_field(2, 16),          # NOT_LEADER
                           pb_field(3, "not the leader"), pb_field(4, hint))

        th = threading.Thread(target=serve_until, args=(fake, done, handle))
        th.start()
        rc, out = self.ctl(["--timeout-ms", "3000", "accrue", "--brand", "acme",
                            "--member", "m1", "--points", "5"],
                           cluster="127.0.0.1:%d" % fake.getsockname()[1])
        done.set()
        th.join()
        fake.close()
        stop_foreign()
        self.assertTrue(redirected, out)    # the client did ask, and was redirected
        self.assertEqual(rc, 3, out)        # not applied, and known not to be
        self.assertEqual(foreign_got, [])   # the foreign server never got a byte of it
        self.assert_cluster_intact()

    def http_get(self, i, path):
        s = socket.create_connection(("127.0.0.1", self.base + 200 + i))
        s.sendall(("GET %s HTTP/1.0\r\n\r\n" % path).encode())
        return self.answer_before_close(s)

    def test_an_idle_http_flood_is_capped_and_cut(self):
        socks = [socket.create_connection(("127.0.0.1", self.base + 200 + 1)) for _ in range(200)]
        try:
            self.assert_cluster_intact()  # the client port serves meanwhile
            # The node ends every one of them: over the cap at once, the rest at the
            # request deadline; none is answered, none stays open.
            answers = [self.answer_before_close(s) for s in socks]
        finally:
            for s in socks:
                s.close()
        self.assertEqual(answers, [b""] * 200)
        self.assertIn(b"200 OK", self.http_get(1, "/health"))

    def test_half_a_handshake_is_cut_at_the_deadline(self):
        before = len(self.log(1))
        s = socket.create_connection(("127.0.0.1", self.raft_port(1)))
        s.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header, then nothing
        self.wait_refused(1, before, "deadline")
        self.assert_closed_without_answer(s)
        self.assert_cluster_intact()


if __name__ == "__main__":
    unittest.main()
