/*
 * rpc/metrics — a node's /metrics page in the Prometheus text format (version 0.0.4).
 *
 * Every family has a HELP and a TYPE line; counters end in _total, times are in
 * seconds, histograms have cumulative buckets, _sum and _count. `promtool check
 * metrics` finds nothing to say about the page (tests/test_metrics.py), and
 * docs/grafana/tally.json draws it. The families are listed in README (Operations:
 * metrics).
 */
#ifndef TALLY_RPC_METRICS_H
#define TALLY_RPC_METRICS_H

#include <stddef.h>

#include "consensus/node.h"
#include "rpc/server.h"

/* Writes the page for node n and its client server s into buf (at most cap bytes,
 * NUL-terminated when cap > 0); returns its length. A page cut short at cap ends
 * with a whole line missing, never a half one. */
size_t tally_metrics_render(struct tally_node *n, const struct tally_server *s, char *buf,
			    size_t cap);

#endif
