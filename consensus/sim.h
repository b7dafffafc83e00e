/*
 * consensus/sim — a node driven by the deterministic simulator (tests/sim.c) instead
 * of libuv: the same node (group commit, reads, ledger time, the state machine, the
 * I/O guard, fail-stop), over a raft instance and raft_io that the simulator owns
 * (canonical raft's raft_fixture: in-memory I/O, simulated time).
 *
 * The simulator calls what libuv would: node_sim_service when node_sim_kicked says a
 * service turn is due (tally_node_submit, raft callbacks), node_sim_tick every
 * heartbeat_ms of simulated time. Clocks come from tally_node_config (mono_ms,
 * wall_ms); a fail-stop calls tally_node_config.fail_stop, and from then on the node
 * is dead (node_sim_dead): it applies, proposes and answers nothing more.
 *
 * Lifecycle, per incarnation of a server (a restart is a new incarnation over the same
 * raft_io, whose "disk" survives):
 *   node_sim_open → raft_init(r, io, node_sim_fsm(n), ...) (or raft_fixture_grow) →
 *   node_sim_attach(n, r, io) → raft_start (or raft_fixture_start) → node_sim_started →
 *   ... → raft_close(r) → node_sim_detach → node_sim_free.
 */
#ifndef TALLY_CONSENSUS_SIM_H
#define TALLY_CONSENSUS_SIM_H

#include <raft.h>
#include <stdbool.h>

#include "consensus/node.h"

/* A node with its ledger (opened and checked as tallyd does) and no raft yet. */
int node_sim_open(struct tally_node **out, const struct tally_node_config *cfg, char *errmsg,
		  size_t errcap);

/* The fsm to give raft_init for this node. */
struct raft_fsm *node_sim_fsm(struct tally_node *n);

/* Takes r (raft_init'ed with node_sim_fsm(n) over io, not started): wraps io's writing
 * methods (the I/O guard) and its start (readiness), applies the node's raft settings. */
void node_sim_attach(struct tally_node *n, struct raft *r, struct raft_io *io);

/* raft_start returned 0. */
void node_sim_started(struct tally_node *n);

bool node_sim_kicked(const struct tally_node *n);
void node_sim_service(struct tally_node *n);
void node_sim_tick(struct tally_node *n);
bool node_sim_dead(const struct tally_node *n);

/* The process dies here: from now on the node does nothing (raft may still call it
 * until the simulator closes that raft; it applies and answers nothing). */
void node_sim_crash(struct tally_node *n);

/* After raft_close(r): gives io its own methods back. */
void node_sim_detach(struct tally_node *n);

/* Frees a detached node: commands still queued are answered UNAVAILABLE (they never
 * left it); the ledger is closed. */
void node_sim_free(struct tally_node *n);

#endif /* TALLY_CONSENSUS_SIM_H */
