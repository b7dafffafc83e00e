/*
 * consensus/aioreap — raft's kernel AIO contexts are destroyed off the event loop.
 *
 * raft_uv writes each open segment of the log through a kernel AIO context of its
 * own (io_setup), and destroys it (io_destroy) on the node's loop when it closes the
 * segment: once per segment of log (8 MiB by default), every few seconds under load. The
 * kernel's io_destroy does not return until an RCU grace period has passed, so the
 * loop sat in it for 30–38 ms each time on this project's VMs (strace -T), and every
 * request in flight on that node waited (docs/performance.md, "raft closing a log
 * segment").
 *
 * aioreap.c defines syscall() for the process, the way flush.c defines fsync(): raft
 * reaches the kernel's AIO through libc's syscall(), by number. An io_destroy is put
 * on a queue and answered 0 at once; a thread of this module's own destroys the
 * queued contexts one after the other. Every other call is passed on to libc's
 * syscall() unchanged, with six arguments, as libc's own takes them. raft never uses
 * a context again once it has asked for its destruction (it has already reaped or
 * cancelled its requests and closed the file), so nothing raft does depends on when
 * the context goes. A context that cannot be queued (NODE_AIO_REAP_QUEUE of them
 * already waiting, or no thread) is destroyed in place, as before.
 *
 * node_aio_reaped:     contexts the reaper thread has destroyed in this process.
 * node_aio_reap_drain: waits until no destruction is queued or running.
 * node_aio_reap_hold:  holds (true) or lets go (false) the reaper between two
 *                      contexts; for tests that must see a queued context alive.
 */
#ifndef TALLY_CONSENSUS_AIOREAP_H
#define TALLY_CONSENSUS_AIOREAP_H

#include <stdbool.h>
#include <stdint.h>

#define NODE_AIO_REAP_QUEUE 64 /* contexts waiting to be destroyed; raft closes one per
				* segment, and one destruction takes ~35 ms */

uint64_t node_aio_reaped(void);
void node_aio_reap_drain(void);
void node_aio_reap_hold(bool hold);

#endif
