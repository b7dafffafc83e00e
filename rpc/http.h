/*
 * rpc/http — a very small HTTP/1.0 responder for /metrics and /health.
 *
 * Each connection sends one GET request; the server answers with what the render
 * callback produces and closes. Requests over 8 KiB or not starting with "GET " get
 * 400. Limits: HTTP_CONNECTIONS_MAX connections at once (more are closed unanswered)
 * and HTTP_REQUEST_MS for a connection's whole life (request in, answer out), so idle
 * or slow connections cannot pile up; it listens on its own address (tallyd --http),
 * which operators keep on a private interface. Lifecycle: tally_http_init →
 * tally_http_close (cb; ends open connections) → tally_http_free.
 */
#ifndef TALLY_RPC_HTTP_H
#define TALLY_RPC_HTTP_H

#include <stddef.h>
#include <uv.h>

#define HTTP_CONNECTIONS_MAX 64  /* open at once */
#define HTTP_REQUEST_MS 5000      /* from accept to the answer written */

struct tally_http;

/* Writes the body for `path` into buf (at most cap bytes), sets *status (200, 404,
 * 503 ...) and *content_type, and returns the body length. */
typedef size_t (*tally_http_render_fn)(void *data, const char *path, char *buf, size_t cap,
				       int *status, const char **content_type);

int tally_http_init(struct tally_http **out, uv_loop_t *loop, const char *listen_address,
		    tally_http_render_fn render, void *data, char *err, size_t errcap);
void tally_http_close(struct tally_http *h, void (*cb)(void *data), void *data);
void tally_http_free(struct tally_http *h);

#endif
