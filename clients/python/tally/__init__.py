"""tally: a Python client of a Tally cluster.

It runs on libtally, the C client (rpc/tally.h), through ctypes, so it speaks to the
cluster exactly as tallyctl does: TLS 1.3 with the cluster's CA, the key proof bound
to the TLS session, the next node when one is down, NOT_LEADER followed to the
leader, definite failures retried with backoff. Messages are the protobuf classes
protoc generates from proto/tally.proto (module tally_pb2; make builds it into
build/rel/python), so every command, query and admin request the proto defines can
be sent; the methods below build the common ones.

Outcomes are kept apart by exception:
  Rejected        the ledger (or the node) refused it: definite, nothing changed
  Unavailable     definitely not applied: no node took it (or failed before acting)
  UnknownOutcome  a command was sent and no definite answer came: it may or may not
                  have been applied; resend it with the same request id
                  (exc.request_id) and the ledger applies it at most once

A command is resent with the same request id (up to `retries` times) when its
outcome is unknown, so a caller sees UnknownOutcome only when every try was unknown.

    from tally import Client
    with Client(cluster="10.0.0.1:8001,10.0.0.2:8001", key_file="mall.key",
                ca="ca.pem") as t:
        hold = t.hold("aurora", "alice", 1500, timeout_s=3600)
        t.capture(hold.hold_id, points=1200)

The library: $TALLY_LIB, or libtally.so.0 where the dynamic linker finds it (make
install puts it in PREFIX/lib).
"""

import ctypes
import os
import time

import tally_pb2 as pb

__all__ = ["Client", "TallyError", "Rejected", "Unavailable", "UnknownOutcome", "pb", "money",
           "rfc3339", "run"]

Code = pb.ResultCode
_ERR_BYTES = 512
_DEFAULT_RETRIES = 3


class TallyError(Exception):
    """A Tally call that did not succeed; code is a tally.v1.ResultCode."""

    def __init__(self, code, message, request_id=None):
        super().__init__("%s: %s" % (Code.Name(code), message))
        self.code = code
        self.message = message
        self.request_id = request_id


class Rejected(TallyError):
    """Refused, definitely: the ledger's business rule or the node's (a bad argument,
    a key without the right). Nothing changed. `result` is the answer, when there is one."""

    def __init__(self, code, message, request_id=None, result=None):
        super().__init__(code, message, request_id)
        self.result = result


class Unavailable(TallyError):
    """Definitely not applied: no node took the request, or it failed before acting."""


class UnknownOutcome(TallyError):
    """Sent, and no definite answer: applied or not. Retry with exc.request_id."""


class _Options(ctypes.Structure):
    _fields_ = [("cluster", ctypes.c_char_p), ("key_name", ctypes.c_char_p),
                ("secret", ctypes.c_char_p), ("timeout_ms", ctypes.c_uint),
                ("attempts", ctypes.c_uint), ("frame_bytes_max", ctypes.c_size_t),
                ("ca_file", ctypes.c_char_p)]


def _load(path=None):
    lib = ctypes.CDLL(path or os.environ.get("TALLY_LIB") or "libtally.so.0")
    lib.tally_client_open.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(_Options),
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.tally_client_open.restype = ctypes.c_int
    lib.tally_client_close.argtypes = [ctypes.c_void_p]
    lib.tally_client_close.restype = None
    lib.tally_client_error.argtypes = [ctypes.c_void_p]
    lib.tally_client_error.restype = ctypes.c_char_p
    lib.tally_client_address.argtypes = [ctypes.c_void_p]
    lib.tally_client_address.restype = ctypes.c_char_p
    lib.tally_client_call_bytes.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                            ctypes.POINTER(ctypes.c_void_p),
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.tally_client_call_bytes.restype = ctypes.c_int
    lib.tally_client_free_bytes.argtypes = [ctypes.c_void_p]
    lib.tally_client_free_bytes.restype = None
    return lib


def run(main):
    """Runs main() for a command-line program and returns its exit status the way
    tallyctl's are: main's own (0 when None), 1 refused, 3 not applied, 4 outcome
    unknown (the request id to send again is printed); the reason goes to stderr."""
    import sys
    try:
        rc = main()
    except Rejected as e:
        print("refused: %s" % e, file=sys.stderr)
        return 1
    except Unavailable as e:
        print("not applied (the cluster is unavailable): %s" % e, file=sys.stderr)
        return 3
    except UnknownOutcome as e:
        print("outcome unknown: run again (request %s is applied at most once): %s" % (
            e.request_id, e), file=sys.stderr)
        return 4
    return rc or 0


def read_key_file(path):
    """(name, secret) from a client key file: one `NAME ROLE BRANDS SECRET` line, mode
    0600 (as tallyctl --key-file demands: a key others can read is refused)."""
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise ValueError("%s: readable by others (chmod 600 it)" % path)
    with open(path) as f:
        lines = [l.split() for l in f if l.strip() and not l.lstrip().startswith("#")]
    if len(lines) != 1 or len(lines[0]) != 4:
        raise ValueError("%s: expected one line NAME ROLE BRANDS SECRET" % path)
    return lines[0][0], lines[0][3]


def new_request_id(now_ms=None):
    """A fresh request id: UUIDv7's layout (RFC 9562) in 32 hex digits, the time in
    milliseconds first and 74 random bits after. The ledger files each (key, request
    id) it applies in a B-tree; ids that rise with time land together at its end, where
    random ones (UUIDv4) would each land on a page of their own: 1.4x the apply's cost
    at a million commands (README, Idempotency)."""
    ms = (time.time_ns() // 1000000 if now_ms is None else now_ms) & ((1 << 48) - 1)
    r = int.from_bytes(os.urandom(10), "big")
    rand_a, rand_b = (r >> 62) & 0xFFF, r & ((1 << 62) - 1)
    return "%032x" % (ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


def money(micros, currency):
    """"60.00 CNY": micros of a currency at its minor units, never rounded (as tallyctl)."""
    minor = 0 if currency in _NO_MINOR else 3 if currency in _THREE_MINOR else \
        4 if currency in ("CLF", "UYW") else 2
    sign, mag = ("-" if micros < 0 else ""), abs(micros)
    frac = "%06d" % (mag % 1000000)
    keep = 6
    while keep > minor and frac[keep - 1] == "0":
        keep -= 1
    text = "%s%d%s%s" % (sign, mag // 1000000, "." if keep else "", frac[:keep])
    return text + (" " + currency if currency else "")


_NO_MINOR = {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
             "VND", "VUV", "XAF", "XOF", "XPF"}
_THREE_MINOR = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}


def rfc3339(ms):
    """UNIX ms as RFC 3339 in UTC with milliseconds (as tallyctl prints them)."""
    import datetime
    t = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


class Client:
    """A connection to a Tally cluster (not thread-safe: one per thread).

    cluster: "host:port,..." client addresses ($TALLY_CLUSTER); key_file: a client key
    file ($TALLY_KEY_FILE, or key + key_dir as tallyctl's $TALLY_KEY_DIR/NAME.key);
    ca: the cluster's CA certificate ($TALLY_CA) for TLS, or insecure=True for a
    plaintext cluster. timeout_ms: per attempt; retries: resends of a command whose
    outcome was unknown, with the same request id.
    """

    def __init__(self, cluster=None, key_file=None, ca=None, insecure=False, key=None,
                 key_dir=None, timeout_ms=5000, retries=_DEFAULT_RETRIES, lib=None):
        env = os.environ
        cluster = cluster or env.get("TALLY_CLUSTER")
        key_dir = key_dir or env.get("TALLY_KEY_DIR")
        key_file = key_file or env.get("TALLY_KEY_FILE") or (
            os.path.join(key_dir, (key or "admin") + ".key") if key_dir else None)
        ca = None if insecure else (ca or env.get("TALLY_CA"))
        if not cluster or not key_file:
            raise ValueError("give cluster and key_file (or TALLY_CLUSTER and TALLY_KEY_FILE)")
        if ca is None and not insecure:
            raise ValueError("give ca (the cluster's CA, TLS) or insecure=True (plaintext)")
        self._lib = _load(lib)
        self.retries = retries
        name, secret = read_key_file(key_file)
        opts = _Options(cluster.encode(), name.encode(), secret.encode(), timeout_ms, 0, 0,
                        ca.encode() if ca else None)
        err = ctypes.create_string_buffer(_ERR_BYTES)
        handle = ctypes.c_void_p()
        rc = self._lib.tally_client_open(ctypes.byref(handle), ctypes.byref(opts), err, _ERR_BYTES)
        if rc != Code.OK:
            exc = Rejected if rc == Code.UNAUTHENTICATED else Unavailable
            raise exc(rc, err.value.decode(errors="replace"))
        self._c = handle

    def close(self):
        if self._c:
            self._lib.tally_client_close(self._c)
            self._c = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_c", None):
            self.close()

    @property
    def address(self):
        """The node the client talks to now."""
        return self._lib.tally_client_address(self._c).decode()

    def _call(self, request, answer_type):
        """(transport code, decoded answer or None) of one request through libtally."""
        if not self._c:
            raise ValueError("the client is closed")
        data = request.SerializeToString()
        out, out_len = ctypes.c_void_p(), ctypes.c_size_t()
        rc = self._lib.tally_client_call_bytes(self._c, data, len(data), ctypes.byref(out),
                                               ctypes.byref(out_len))
        if rc != Code.OK:
            return rc, self._lib.tally_client_error(self._c).decode(errors="replace")
        try:
            answer = answer_type()
            answer.ParseFromString(ctypes.string_at(out, out_len.value))
        finally:
            self._lib.tally_client_free_bytes(out)
        return rc, answer

    # ---- commands ---------------------------------------------------------------

    def command(self, cmd):
        """Sends one tally.v1.Command (a request id is made when it has none) and
        returns its CommandResult (result.replay when the ledger had applied it
        already). Raises Rejected, Unavailable or UnknownOutcome."""
        if not cmd.request_id:
            cmd.request_id = new_request_id()
        req = pb.Request(command=cmd)
        for attempt in range(self.retries + 1):
            rc, r = self._call(req, pb.CommandResult)
            if rc == Code.OK:
                if r.code != Code.OK:
                    raise Rejected(r.code, r.message, cmd.request_id, r)
                return r
            if rc != Code.TIMEOUT:  # UNAVAILABLE, INTERNAL ...: definitely not applied
                raise (Rejected if rc == Code.INVALID_ARGUMENT else Unavailable)(
                    rc, r, cmd.request_id)
        raise UnknownOutcome(rc, r, cmd.request_id)

    def batch(self, cmds):
        """Sends up to 8192 commands in one request and returns their CommandResults in
        order. A command whose own result is a transport outcome (NOT_LEADER or
        UNAVAILABLE: not applied; TIMEOUT: unknown) is resent with its request id, up
        to `retries` times; its last result stays in the list otherwise. Business
        rejections are results, not exceptions. Raises Unavailable or UnknownOutcome
        for the request as a whole."""
        for c in cmds:
            if not c.request_id:
                c.request_id = new_request_id()
        results = [None] * len(cmds)
        unanswered = list(range(len(cmds)))
        for attempt in range(self.retries + 1):
            req = pb.Request(batch=pb.CommandList(commands=[cmds[i] for i in unanswered]))
            rc, br = self._call(req, pb.BatchResult)
            if rc == Code.TIMEOUT and attempt < self.retries:
                continue
            if rc != Code.OK:
                exc = UnknownOutcome if rc == Code.TIMEOUT else Unavailable
                raise exc(rc, br)
            for i, r in zip(unanswered, br.results):
                results[i] = r
            unanswered = [i for i in unanswered if results[i].code in
                    (Code.NOT_LEADER, Code.UNAVAILABLE, Code.TIMEOUT)]
            if not unanswered:
                break
        return results

    def _cmd(self, field, request_id=None, **kw):
        cmd = pb.Command(request_id=request_id or "")
        getattr(cmd, field).SetInParent()
        for k, v in kw.items():
            if v is not None:
                setattr(getattr(cmd, field), k, v)
        return self.command(cmd)

    def register_brand(self, brand, name=None, currency="EUR", point_value_micros=10000,
                       expiry_months=0, request_id=None):
        return self._cmd("register_brand", request_id, id=brand, name=name or brand,
                         currency=currency, point_value_micros=point_value_micros,
                         expiry_months=expiry_months)

    def open_member(self, member, segment=pb.OWNER_PASSENGER, request_id=None):
        return self._cmd("open_member", request_id, id=member, segment=segment)

    def accrue(self, brand, member, points, reason=None, reference=None, request_id=None):
        return self._cmd("accrue", request_id, brand=brand, member=member, points=points,
                         reason=reason, reference=reference)

    def import_points(self, brand, member, points, expires_ms=0, reference=None,
                      request_id=None):
        """A legacy balance as one lot keeping its expiry (0: never); an admin key."""
        return self._cmd("import_points", request_id, brand=brand, member=member, points=points,
                         expires_ms=expires_ms, reference=reference)

    def redeem(self, brand, member, points, reason=None, reference=None, request_id=None):
        return self._cmd("redeem", request_id, brand=brand, member=member, points=points,
                         reason=reason, reference=reference)

    def hold(self, brand, member, points, timeout_s=None, reference=None, request_id=None):
        """Sets points aside; the result's hold_id names the hold."""
        return self._cmd("hold", request_id, brand=brand, member=member, points=points,
                         timeout_s=timeout_s, reference=reference)

    def capture(self, hold_id, points=None, request_id=None):
        return self._cmd("capture", request_id, hold_id=hold_id, points=points)

    def void(self, hold_id, request_id=None):
        return self._cmd("void", request_id, hold_id=hold_id)

    def refund(self, entry_seq, points=None, reason=None, request_id=None):
        """Reverses a redemption or capture (its journal entry), wholly or in part."""
        return self._cmd("reverse", request_id, entry_seq=entry_seq, points=points, reason=reason)

    def transfer(self, brand, from_member, to_member, points, reason=None, request_id=None):
        return self._cmd("transfer", request_id, brand=brand, from_member=from_member,
                         to_member=to_member, points=points, reason=reason)

    def set_agreement(self, from_brand, to_brand, rate_num, rate_den, price_micros=0,
                      active=True, request_id=None, **limits):
        """Sets (or with active=False suspends) the rate from_brand -> to_brand; limits:
        min_points, max_points, daily_cap_points, valid_from_ms, valid_until_ms."""
        return self._cmd("set_agreement", request_id, from_brand=from_brand, to_brand=to_brand,
                         rate_num=rate_num, rate_den=rate_den, price_micros=price_micros,
                         active=active, **limits)

    def exchange(self, from_brand, to_brand, member, points, request_id=None):
        return self._cmd("exchange", request_id, from_brand=from_brand, to_brand=to_brand,
                         member=member, points=points)

    def settle(self, brand_a, brand_b, until_ms, request_id=None):
        """Nets the pair's obligations up to until_ms (in the past); the result's
        settlement_id names the settlement."""
        return self._cmd("settle", request_id, brand_a=brand_a, brand_b=brand_b, until_ms=until_ms)

    def confirm_settlement(self, settlement_id, request_id=None):
        return self._cmd("confirm_settlement", request_id, settlement_id=settlement_id)

    # ---- queries and status -----------------------------------------------------

    def query(self, q):
        """Runs one tally.v1.Query and returns its QueryResult. Raises Rejected (the
        node refused it: unknown brand, no right) or Unavailable (no answer: a read
        changes nothing)."""
        rc, r = self._call(pb.Request(query=q), pb.QueryResult)
        if rc != Code.OK:
            raise (Rejected if rc == Code.INVALID_ARGUMENT else Unavailable)(rc, r)
        if r.code != Code.OK:
            raise Rejected(r.code, r.message, result=r)
        return r

    def balance(self, brand, member, stale=False):
        """The member's Account in the brand."""
        r = self.query(pb.Query(accounts=pb.GetAccounts(brand=brand, members=[member]), stale=stale))
        return r.accounts[0]

    def brand(self, brand):
        return self.query(pb.Query(brand=pb.GetBrand(id=brand))).brand

    def entries(self, from_seq=0, limit=100, brand="", member=""):
        """(entries, next_seq): a page of the journal as StoredEntry messages."""
        r = self.query(pb.Query(entries=pb.ListEntries(from_seq=from_seq, limit=limit, brand=brand,
                                                       member=member)))
        return list(r.entries), r.next_seq

    def settlements(self, brand_a="", brand_b=""):
        q = pb.Query(settlements=pb.ListSettlements(brand_a=brand_a, brand_b=brand_b))
        return list(self.query(q).settlements)

    def status(self):
        """The cluster's Status: nodes, the leader, terms, applied indices."""
        rc, r = self._call(pb.Request(admin=pb.Admin(op=pb.Admin.STATUS)), pb.Response)
        if rc != Code.OK:
            raise Unavailable(rc, r)
        if r.code != Code.OK:
            raise Rejected(r.code, r.message, result=r)
        return r.status
