/*
 * rpc/stream — writing to a libuv stream without a write request when the socket
 * takes the bytes at once.
 *
 * libuv re-arms a stream's epoll watcher after every completed uv_write request (one
 * epoll_ctl per write). Answers to clients and the hops of raft's messages through
 * consensus/tlsnet.c are small and nearly always fit the socket's buffer, so they
 * are tried directly first; only what the socket does not take is queued.
 */
#ifndef TALLY_RPC_STREAM_H
#define TALLY_RPC_STREAM_H

#include <stddef.h>
#include <uv.h>

/* Writes what the socket takes now of data[0..len), when nothing is queued on the
 * stream (so order is kept); returns how many bytes went (0 when something is
 * queued, or on an error, which the queued write that follows will meet). */
size_t tally_stream_write_now(uv_stream_t *s, const void *data, size_t len);

#endif /* TALLY_RPC_STREAM_H */
