/*
 * consensus/sim — see sim.h.
 */
#include "consensus/sim.h"

#include <assert.h>

#include "consensus/internal.h"

int node_sim_open(struct tally_node **out, const struct tally_node_config *cfg, char *errmsg,
		  size_t errcap)
{
	assert(out != NULL && cfg != NULL);
	assert(cfg->mono_ms != NULL && cfg->wall_ms != NULL); /* simulated clocks only */
	return node_create(out, NULL, cfg, errmsg, errcap);
}

struct raft_fsm *node_sim_fsm(struct tally_node *n)
{
	assert(n != NULL && n->loop == NULL);
	return &n->fsm;
}

void node_sim_attach(struct tally_node *n, struct raft *r, struct raft_io *io)
{
	assert(n != NULL && n->loop == NULL && r != NULL && io != NULL);
	assert(n->raft == NULL && r->fsm == &n->fsm);
	n->raft = r;
	n->io = io;
	node_raft_settings(n);
	node_ioguard_install(n);
	node_health_install(n);
}

void node_sim_started(struct tally_node *n)
{
	assert(n != NULL && n->raft_inited && !n->started);
	n->started = true;
	node_bootmark_started(n); /* as tally_node_start does */
}

bool node_sim_kicked(const struct tally_node *n)
{
	assert(n != NULL);
	return n->sim_kicked;
}

void node_sim_service(struct tally_node *n)
{
	assert(n != NULL && n->loop == NULL);
	node_service(n);
}

void node_sim_tick(struct tally_node *n)
{
	assert(n != NULL && n->loop == NULL);
	node_tick(n);
}

bool node_sim_dead(const struct tally_node *n)
{
	assert(n != NULL);
	return n->dead;
}

void node_sim_crash(struct tally_node *n)
{
	assert(n != NULL);
	n->dead = true;
}

void node_sim_detach(struct tally_node *n)
{
	assert(n != NULL && n->raft != NULL);
	node_ioguard_remove(n);
	n->raft = NULL;
	n->io = NULL;
	n->raft_inited = false;
}

void node_sim_free(struct tally_node *n)
{
	if (n == NULL)
		return;
	assert(n->loop == NULL && n->raft == NULL);
	assert(n->inflight == 0 && !n->barrier_busy); /* raft_close answered them */
	node_queues_fail(n);
	node_free_parts(n);
}
