#!/usr/bin/env python3
"""A mall's checkout against Tally: hold points when an order is placed, capture what
ships, void what is cancelled, refund what comes back.

    mall_checkout.py --brand aurora --member alice   (TALLY_CLUSTER, TALLY_CA and a
                                                      mall key: TALLY_KEY_FILE)

Every call carries a request id derived from the order, so a checkout that is run
again after a crash is answered from the ledger, not applied twice.
"""

import argparse
import sys

from tally import Client, Rejected, money, run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brand", required=True)
    ap.add_argument("--member", required=True)
    ap.add_argument("--order", default="order-8812")
    ap.add_argument("--points", type=int, default=1500)
    a = ap.parse_args()
    with Client() as t:
        worth = t.brand(a.brand)

        def show(what, r):
            print("  %-28s entry %-4d available %d (%s), held %d" % (
                what, r.entry_seq, r.available,
                money(r.available * worth.point_value_micros, worth.currency), r.held))
        order = a.order
        hold = t.hold(a.brand, a.member, a.points, timeout_s=7 * 24 * 3600, reference=order,
                      request_id=order + "-hold")
        show("hold %d for %s" % (hold.hold_id, order), hold)
        shipped = t.capture(hold.hold_id, points=a.points * 4 // 5,
                            request_id=order + "-capture")
        show("captured %d at shipment" % shipped.points, shipped)
        extra = t.hold(a.brand, a.member, 100, reference=order + "-giftwrap",
                       request_id=order + "-hold-2")
        show("hold %d for gift wrap" % extra.hold_id, extra)
        show("gift wrap cancelled", t.void(extra.hold_id, request_id=order + "-void"))
        back = t.refund(shipped.entry_seq, points=shipped.points // 4, reason="item returned",
                        request_id=order + "-refund")
        show("refunded %d for a return" % back.points, back)
        try:
            t.redeem(a.brand, a.member, 10 ** 9, request_id=order + "-too-much")
        except Rejected as e:
            print("  a redemption beyond the balance is refused: %s" % e)


if __name__ == "__main__":
    sys.exit(run(main))
