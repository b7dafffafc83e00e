#!/usr/bin/env python3
"""A partner brand's settlement desk: convert a member's points from the other brand
into ours at the agreed rate, settle what the two brands owe each other up to a
cut-off, and confirm the settlement as the payee.

    partner_desk.py --from aurora --to borealis --member alice --points 3001
        (TALLY_CLUSTER, TALLY_CA and the partner's key: TALLY_KEY_FILE)
"""

import argparse
import sys
import time

from tally import Client, money, pb, rfc3339, run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", required=True)
    ap.add_argument("--to", dest="dst", required=True)
    ap.add_argument("--member", required=True)
    ap.add_argument("--points", type=int, required=True)
    ap.add_argument("--id", default="desk-1", help="request ids start with this")
    a = ap.parse_args()
    with Client() as t:
        x = t.exchange(a.src, a.dst, a.member, a.points, request_id=a.id + "-exchange")
        print("  exchanged %d %s points of %s: %d %s points (entry %d)" % (
            a.points, a.src, a.member, x.points, a.dst, x.entry_seq))
        # The cut-off: the exchange's own ledger time. Ledger time is the cluster's
        # clock, which may run a few ms ahead of this machine's, so "now" here could
        # fall before the exchange. The cut-off must be in the past when the ledger
        # settles, so the settlement goes once a couple of ms have passed.
        (e,), _ = t.entries(from_seq=x.entry_seq, limit=1, brand=a.dst)
        until_ms = pb.Entry.FromString(e.entry).time_ms
        waited_from = time.monotonic()
        while time.monotonic() - waited_from < 0.002:
            time.sleep(0.001)
        s = t.settle(a.src, a.dst, until_ms, request_id=a.id + "-settle")
        (st,) = [x for x in t.settlements(a.src, a.dst) if x.id == s.settlement_id]
        currency = t.brand(a.dst).currency
        print("  settlement %d up to %s: %d obligations, %s pays %s %s" % (
            st.id, rfc3339(st.until_ms), st.count, st.payer, st.payee,
            money(st.net_micros, currency)))
        t.confirm_settlement(st.id, request_id=a.id + "-confirm")
        print("  settlement %d confirmed by %s" % (st.id, st.payee))


if __name__ == "__main__":
    sys.exit(run(main))
