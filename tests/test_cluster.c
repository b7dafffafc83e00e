/*
 * Integration: real tallyd processes on loopback, driven through libtally.
 *
 * Each test starts its own cluster in a fresh directory with ports derived from the
 * PID, and stops it. Waits are bounded polls of an observable condition (a leader
 * exists, a node reached an applied index), never fixed sleeps.
 */
#include "tests/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <lmdb.h>
#include <openssl/evp.h>

#include "consensus/applier.h" /* NODE_APPLIER_DELAY_ENV */
#include "consensus/clock.h"
#include "consensus/node.h"
#include "rpc/frame.h"
#include "rpc/keys.h"
#include "rpc/tally.h"
#include "rpc/units.h"
#include "tests/ports.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define NODES_MAX 5
/* How long an awaited condition ("a leader exists", "the hold was released") may take
 * before the test calls it a hang. A watchdog, not a performance assertion: only a
 * failing run waits this long, so it is generous enough for ASan, valgrind and a
 * loaded two-core machine. */
#define HANG_MS 60000
/* A test client's wait for one answer: also a watchdog (an answer that takes this long
 * under load is a hang), so that a slow run never turns into a spurious TIMEOUT. */
#define CLIENT_TIMEOUT_MS 15000

static char tallyd_path[1024];
/* What a failed test leaves running, for the teardown: a test's cluster lives on its
 * stack, which is gone after cmocka's longjmp. */
static pid_t live_pid[16];
static char live_dir[256];
/* The port block of the cluster alive now (one at a time), released when it stops. */
static struct ports_block live_ports = {0, -1};
/* A small file system mounted for a test (one at a time), unmounted when it stops. */
static char live_mount[300];

static void live_add(pid_t pid)
{
	for (int i = 0; i < 16; i++)
		if (live_pid[i] == 0) {
			live_pid[i] = pid;
			return;
		}
}

static void live_remove(pid_t pid)
{
	for (int i = 0; i < 16; i++)
		if (live_pid[i] == pid)
			live_pid[i] = 0;
}

struct cluster {
	int n;
	int base;
	char dir[256];
	char keys[300];
	char certs[300];                /* tally-certs directory: every node speaks TLS */
	char ca[320];                   /* certs/ca.pem, what clients verify nodes with */
	bool insecure;                  /* nodes run --insecure (tests of raw frames) */
	char clients[512];              /* all client addresses */
	pid_t pid[NODES_MAX + 1];
	struct tally_arena arena;
	unsigned req;
	bool fiu;                       /* nodes run under fiu-run (libfiu fault injection) */
	const char *segment_kb;         /* --segment-kb for every node, or NULL */
	bool faketime;                  /* nodes run under libfaketime, DIR/clockI each */
	const char *election_ms;        /* --election-ms for every node ("300") */
	int pwrite_node;                /* the node run with --ledger-pwrite, or 0 */
	const char *journal_segment_kb; /* --journal-segment-kb for every node, or NULL */
	const char *snapshot_trailing;  /* --snapshot-trailing for every node, or NULL */
};

/* Debian's libfaketime (package libfaketime): wall-clock offsets per node, read from a
 * file at every clock call. The monotonic clock is left alone, as a real clock step
 * leaves it. */
#define FAKETIME_LIB "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"

/* The keys file of every test cluster: name, role, scope, secret. */
static const char *const secrets[][4] = {
	{"admin", "admin", "*", "admin-secret-0123456789"},
	{"mall", "mall", "*", "mall-secret-0123456789"},
	{"community", "community", "*", "community-secret-012345"},
	{"dealer", "dealer", "*", "dealer-secret-012345678"},
	{"auditor", "auditor", "*", "auditor-secret-01234567"},
	{"partner-b1", "partner", "b1", "partner-b1-secret-0123"},
	{"partner-b2", "partner", "b2", "partner-b2-secret-0123"},
	{"admin-b1", "admin", "b1", "admin-b1-secret-012345"},
	{"operator", "operator", "*", "operator-secret-0123456"},
};

static const char *secret_of(const char *key)
{
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
		if (strcmp(secrets[i][0], key) == 0)
			return secrets[i][3];
	return "no-such-secret-at-all";
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts); /* this process runs on the real clock */
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void client_addr(const struct cluster *c, int i, char *out, size_t cap)
{
	snprintf(out, cap, "127.0.0.1:%d", c->base + 100 + i);
}

/* ---- processes ---------------------------------------------------------------------- */

/* Node i's libfaketime clock file: "+0", "+1h", "-30s" ... */
static void clock_path(const struct cluster *c, int i, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/clock%d", c->dir, i);
}

/* Sets node i's wall-clock offset (replaced atomically: libfaketime rereads it). */
static void clock_set(const struct cluster *c, int i, const char *offset)
{
	char path[300], tmp[310];
	clock_path(c, i, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	assert_non_null(f);
	fprintf(f, "%s\n", offset);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(rename(tmp, path), 0);
}

/* In the child about to exec node i: run it under libfaketime (after ASan's runtime,
 * which must come first in LD_PRELOAD). */
static void faketime_env(const struct cluster *c, int i)
{
	char path[300], preload[600];
	clock_path(c, i, path, sizeof(path));
#ifdef TALLY_ASAN_LIB
	snprintf(preload, sizeof(preload), "%s %s", TALLY_ASAN_LIB, FAKETIME_LIB);
#else
	snprintf(preload, sizeof(preload), "%s", FAKETIME_LIB);
#endif
	setenv("LD_PRELOAD", preload, 1);
	setenv("FAKETIME_TIMESTAMP_FILE", path, 1);
	setenv("FAKETIME_NO_CACHE", "1", 1);
	setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
}

static void node_start(struct cluster *c, int i, bool bootstrap, bool join)
{
	char id[8], dir[300], raft[32], client[32], http[32], log[320], boot[1024] = "";
	snprintf(id, sizeof(id), "%d", i);
	snprintf(dir, sizeof(dir), "%s/node%d", c->dir, i);
	snprintf(raft, sizeof(raft), "127.0.0.1:%d", c->base + i);
	client_addr(c, i, client, sizeof(client));
	snprintf(http, sizeof(http), "127.0.0.1:%d", c->base + 200 + i);
	snprintf(log, sizeof(log), "%s/node%d.log", c->dir, i);
	for (int j = 1; j <= c->n; j++) {
		size_t at = strlen(boot);
		snprintf(boot + at, sizeof(boot) - at, "%s%d=127.0.0.1:%d|127.0.0.1:%d", j > 1 ? "," : "",
			 j, c->base + j, c->base + 100 + j);
	}
	mkdir(dir, 0755);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		const char *args[40];
		int k = 0;
		char fifo[320];
		if (c->fiu) { /* fiu-run execs tallyd: the pid stays the node's */
			snprintf(fifo, sizeof(fifo), "%s/fiu", c->dir);
			const char *pre[] = {"fiu-run", "-x", "-f", fifo};
			for (size_t j = 0; j < 4; j++)
				args[k++] = pre[j];
#ifdef TALLY_ASAN_LIB
			/* ASan insists on coming first in LD_PRELOAD, which fiu-run overwrites:
			 * a shell between them puts it back in front, then execs tallyd. */
			args[k++] = "/bin/sh";
			args[k++] = "-c";
			args[k++] = "LD_PRELOAD=\"" TALLY_ASAN_LIB " $LD_PRELOAD\" exec \"$0\" \"$@\"";
#endif
		}
		if (c->faketime)
			faketime_env(c, i);
		const char *base[] = {tallyd_path, "--id", id, "--dir", dir, "--raft", raft,
				      "--client", client, "--keys", c->keys, "--election-ms", c->election_ms,
				      "--snapshot-threshold", "64", "--http", http};
		for (size_t j = 0; j < sizeof(base) / sizeof(base[0]); j++)
			args[k++] = base[j];
		if (c->insecure) {
			args[k++] = "--insecure";
		} else {
			args[k++] = "--certs";
			args[k++] = c->certs;
		}
		if (c->segment_kb != NULL) {
			args[k++] = "--segment-kb";
			args[k++] = c->segment_kb;
		}
		if (i == c->pwrite_node)
			args[k++] = "--ledger-pwrite";
		if (c->journal_segment_kb != NULL) {
			args[k++] = "--journal-segment-kb";
			args[k++] = c->journal_segment_kb;
		}
		if (c->snapshot_trailing != NULL) {
			args[k++] = "--snapshot-trailing";
			args[k++] = c->snapshot_trailing;
		}
		if (bootstrap) {
			args[k++] = "--bootstrap";
			args[k++] = boot;
		} else if (join) {
			args[k++] = "--join";
		}
		assert(k < (int)(sizeof(args) / sizeof(args[0])));
		args[k] = NULL;
		execvp(args[0], (char *const *)args);
		_exit(127);
	}
	c->pid[i] = pid;
	live_add(pid);
}

static void node_signal(struct cluster *c, int i, int sig)
{
	assert_true(c->pid[i] > 0);
	kill(c->pid[i], sig);
	if (sig == SIGKILL || sig == SIGTERM) {
		int status;
		waitpid(c->pid[i], &status, 0);
		live_remove(c->pid[i]);
		c->pid[i] = 0;
		if (sig == SIGTERM && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
			fail_msg("node %d did not exit cleanly on SIGTERM (status %d)", i, status);
	}
}

/* The nodes' keys file, and one client key file per key in keys/ (tallyctl --key-dir). */
static void write_keys_with(struct cluster *c, const char *mall_secret)
{
	FILE *f = fopen(c->keys, "w");
	assert_non_null(f);
	char dir[320], path[400];
	snprintf(dir, sizeof(dir), "%s/keys", c->dir);
	mkdir(dir, 0700);
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
		const char *k = secrets[i][0];
		char line[256];
		snprintf(line, sizeof(line), "%s %s %s %s\n", k, secrets[i][1], secrets[i][2],
			 strcmp(k, "mall") == 0 ? mall_secret : secrets[i][3]);
		fputs(line, f);
		snprintf(path, sizeof(path), "%s/%s.key", dir, k);
		FILE *one = fopen(path, "w");
		assert_non_null(one);
		fputs(line, one);
		fclose(one);
		assert_int_equal(chmod(path, 0600), 0);
	}
	fclose(f);
	assert_int_equal(chmod(c->keys, 0600), 0);
}

/* The cluster's CA and a certificate for every node id a test may start, made by the
 * tally-certs next to tallyd. */
static void certs_make(struct cluster *c)
{
	char tool[1100], cmd[2048];
	snprintf(tool, sizeof(tool), "%s", tallyd_path);
	char *slash = strrchr(tool, '/');
	snprintf(slash + 1, sizeof(tool) - (size_t)(slash + 1 - tool), "tally-certs");
	snprintf(c->certs, sizeof(c->certs), "%s/certs", c->dir);
	snprintf(c->ca, sizeof(c->ca), "%s/ca.pem", c->certs);
	snprintf(cmd, sizeof(cmd), "%s init --dir %s --nodes %d > /dev/null", tool, c->certs, NODES_MAX);
	assert_int_equal(system(cmd), 0);
}

/* How a test's nodes run; all zero is the default (struct cluster's fields). */
struct cluster_opts {
	bool fiu;
	const char *segment_kb;
	bool faketime;
	const char *election_ms;        /* NULL: "300" */
	bool insecure;                  /* plaintext nodes and clients (raw frame tests) */
	int pwrite_node;                /* the node run with --ledger-pwrite, or 0 */
	const char *journal_segment_kb; /* NULL: the node's default */
	const char *snapshot_trailing;  /* NULL: the node's default */
};

/* Prepares a cluster of n nodes (ports, directory, keys, clock files) without starting
 * them. */
static void cluster_prepare(struct cluster *c, int n, const struct cluster_opts *o)
{
	assert(o != NULL);
	bool faketime = o->faketime;
	memset(c, 0, sizeof(*c));
	c->n = n;
	c->fiu = o->fiu;
	c->segment_kb = o->segment_kb;
	c->faketime = faketime;
	c->election_ms = o->election_ms != NULL ? o->election_ms : "300";
	c->insecure = o->insecure;
	c->pwrite_node = o->pwrite_node;
	c->journal_segment_kb = o->journal_segment_kb;
	c->snapshot_trailing = o->snapshot_trailing;
	/* Node i listens on base+i (raft), base+100+i (clients) and base+200+i (HTTP). */
	int offsets[3 * NODES_MAX];
	for (int i = 0; i < NODES_MAX; i++) {
		offsets[3 * i] = 1 + i;
		offsets[3 * i + 1] = 101 + i;
		offsets[3 * i + 2] = 201 + i;
	}
	assert_int_equal(live_ports.lock_fd, -1); /* one cluster at a time */
	ports_acquire(&live_ports, offsets, 3 * NODES_MAX);
	c->base = live_ports.base;
	char *d = fx_tmpdir();
	snprintf(c->dir, sizeof(c->dir), "%s", d);
	free(d);
	snprintf(c->keys, sizeof(c->keys), "%s/keys.conf", c->dir);
	write_keys_with(c, secret_of("mall"));
	certs_make(c);
	for (int i = 1; i <= n; i++) {
		char a[32];
		client_addr(c, i, a, sizeof(a));
		size_t at = strlen(c->clients);
		snprintf(c->clients + at, sizeof(c->clients) - at, "%s%s", i > 1 ? "," : "", a);
	}
	tally_arena_init(&c->arena, 64 << 10, 0);
	snprintf(live_dir, sizeof(live_dir), "%s", c->dir);
	for (int i = 1; faketime && i <= NODES_MAX; i++)
		clock_set(c, i, "+0");
}

/* Starts n nodes run as `o` says. */
static void cluster_start_with(struct cluster *c, int n, const struct cluster_opts *o)
{
	cluster_prepare(c, n, o);
	for (int i = 1; i <= n; i++)
		node_start(c, i, true, false);
}

static void cluster_start(struct cluster *c, int n)
{
	cluster_start_with(c, n, &(struct cluster_opts){0});
}

static void small_fs_unmount(void)
{
	if (live_mount[0] != '\0' && umount2(live_mount, MNT_DETACH) != 0)
		fprintf(stderr, "test_cluster: umount %s: %s\n", live_mount, strerror(errno));
	live_mount[0] = '\0';
}

static void cluster_stop(struct cluster *c)
{
	for (int i = 1; i <= NODES_MAX; i++)
		if (c->pid[i] > 0)
			node_signal(c, i, SIGTERM);
	small_fs_unmount();
	tally_arena_free(&c->arena);
	fx_remove_dir(c->dir);
	live_dir[0] = '\0';
	ports_release(&live_ports);
}

/* After a failed test: end its nodes (SIGKILL, they may be stopped) and files. */
static int teardown(void **state)
{
	(void)state;
	for (int i = 0; i < 16; i++) {
		if (live_pid[i] > 0) {
			kill(live_pid[i], SIGKILL);
			waitpid(live_pid[i], NULL, 0);
			live_pid[i] = 0;
		}
	}
	small_fs_unmount();
	if (live_dir[0] != '\0') /* a failed test: keep its logs for the reader */
		fprintf(stderr, "test_cluster: node logs kept in %s\n", live_dir);
	live_dir[0] = '\0';
	ports_release(&live_ports);
	return 0;
}

/* Whether node i's process has ended, without reaping it (the test may still wait for
 * it); *status receives its exit status or 128 + signal. */
static bool node_ended(const struct cluster *c, int i, int *status)
{
	siginfo_t info;
	memset(&info, 0, sizeof(info));
	if (c->pid[i] <= 0 ||
	    waitid(P_PID, (id_t)c->pid[i], &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
	    info.si_pid != c->pid[i])
		return false;
	*status = info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
	return true;
}

/* The last line of node i's log into buf. */
static void node_log_tail(const struct cluster *c, int i, char *buf, size_t cap)
{
	char path[320], line[512];
	snprintf(path, sizeof(path), "%s/node%d.log", c->dir, i);
	buf[0] = '\0';
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL)
		if (line[0] != '\n')
			snprintf(buf, cap, "%s", line);
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
}

/* Fails the test at once, naming each node that ended and why (the last line of its
 * log), when no node of the cluster is running any more: nothing can answer. */
static void cluster_assert_some_node_runs(const struct cluster *c)
{
	char why[2048] = "", tail[512];
	int status;
	for (int i = 1; i <= NODES_MAX; i++) {
		if (c->pid[i] <= 0)
			continue;
		if (!node_ended(c, i, &status))
			return;
		node_log_tail(c, i, tail, sizeof(tail));
		size_t at = strlen(why);
		snprintf(why + at, sizeof(why) - at, "\n  node %d ended with status %d: %s", i,
			 status, tail);
	}
	if (why[0] != '\0')
		fail_msg("every node of the cluster has ended:%s", why);
}

/* ---- clients ------------------------------------------------------------------------ */

/* What clients verify nodes with: the CA, or nothing for an --insecure cluster. */
static const char *client_ca(const struct cluster *c)
{
	return c->insecure ? NULL : c->ca;
}

static struct tally_client *connect_to(struct cluster *c, const char *addrs, const char *key,
				       const char *secret)
{
	struct tally_client_options o = {.cluster = addrs, .key_name = key, .secret = secret,
					 .timeout_ms = CLIENT_TIMEOUT_MS, .ca_file = client_ca(c)};
	struct tally_client *cl = NULL;
	char err[256];
	int64_t deadline = now_ms() + HANG_MS;
	Tally__V1__ResultCode rc;
	while ((rc = tally_client_open(&cl, &o, err, sizeof(err))) == CODE(UNAVAILABLE) &&
	       now_ms() < deadline)
		cluster_assert_some_node_runs(c);
	if (rc != CODE(OK))
		fail_msg("connect %s as %s: %s (%s)", addrs, key, tally_result_name(rc), err);
	return cl;
}

static struct tally_client *client(struct cluster *c, const char *key)
{
	return connect_to(c, c->clients, key, secret_of(key));
}

/* Whether a call that returned rc should be made again: UNAVAILABLE is definite (the
 * request was not applied) and only means no leader answered within the client's
 * tries (about 1.5 s of backoff), which an election under ASan and load can outlast.
 * What the tests assert is the eventual definite answer, so such calls are made
 * again until HANG_MS, and fail at once when the whole cluster has ended. */
static bool again(const struct cluster *c, Tally__V1__ResultCode rc, int64_t deadline_ms)
{
	if (rc != CODE(UNAVAILABLE) || now_ms() > deadline_ms)
		return false;
	cluster_assert_some_node_runs(c);
	return true;
}

/* The status as seen by the node the client is connected to. */
static Tally__V1__Status *status(struct cluster *c, struct tally_client *cl)
{
	Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
	a.op = TALLY__V1__ADMIN__OP__STATUS;
	Tally__V1__Response *res;
	Tally__V1__ResultCode rc;
	int64_t deadline = now_ms() + HANG_MS;
	while (again(c, rc = tally_client_admin(cl, &a, &c->arena, &res), deadline))
		;
	if (rc != CODE(OK))
		fail_msg("status: %s (%s)", tally_result_name(rc), tally_client_error(cl));
	assert_non_null(res->status);
	return res->status;
}

/* Waits until the cluster has a leader; returns its id. */
static uint64_t wait_leader(struct cluster *c)
{
	struct tally_client *cl = client(c, "auditor");
	int64_t deadline = now_ms() + HANG_MS;
	uint64_t id = 0;
	while (now_ms() < deadline) {
		Tally__V1__Status *s = status(c, cl);
		if (s->leader != NULL && s->leader->id != 0) {
			id = s->leader->id;
			break;
		}
		struct pollfd none;
		poll(&none, 0, 50); /* pace the polling of the condition */
	}
	tally_client_close(cl);
	if (id == 0)
		fail_msg("no leader within %d s; logs in %s", HANG_MS / 1000, c->dir);
	return id;
}

static Tally__V1__Command *cmd(struct cluster *c, const char *req)
{
	Tally__V1__Command *m = tally_arena_zalloc(&c->arena, sizeof(*m));
	tally__v1__command__init(m);
	char buf[48];
	if (req == NULL) {
		snprintf(buf, sizeof(buf), "it-%d-%u", (int)getpid(), ++c->req);
		req = buf;
	}
	m->request_id = tally_arena_strdup(&c->arena, req);
	return m;
}

#define BODY(c, m, field, type, init, CASE)                                     \
	type *field = tally_arena_zalloc(&(c)->arena, sizeof(type));            \
	init(field);                                                            \
	(m)->body_case = TALLY__V1__COMMAND__BODY_##CASE;                       \
	(m)->field = field

/* Sends m until its answer is definite (again(), above); with `unknown_again` an
 * unknown outcome (TIMEOUT: in flight on a leader that lost its leadership) is sent
 * again too, as a client must, for a request whose id makes that safe. */
static Tally__V1__CommandResult *send_cmd_until(struct cluster *c, struct tally_client *cl,
						Tally__V1__Command *m, Tally__V1__ResultCode expect,
						bool unknown_again)
{
	Tally__V1__CommandResult *r = NULL;
	Tally__V1__ResultCode rc;
	int64_t deadline = now_ms() + HANG_MS;
	for (;;) {
		rc = tally_client_command(cl, m, &c->arena, &r);
		if (unknown_again && rc == CODE(TIMEOUT) && now_ms() <= deadline)
			continue;
		if (!again(c, rc, deadline))
			break;
	}
	if (rc != CODE(OK))
		fail_msg("transport: %s (%s)", tally_result_name(rc), tally_client_error(cl));
	if (r->code != expect)
		fail_msg("expected %s, got %s: %s", tally_result_name(expect),
			 tally_result_name(r->code), r->message);
	return r;
}

static Tally__V1__CommandResult *send_cmd(struct cluster *c, struct tally_client *cl,
					  Tally__V1__Command *m, Tally__V1__ResultCode expect)
{
	return send_cmd_until(c, cl, m, expect, false);
}

static Tally__V1__Command *brand_cmd(struct cluster *c, const char *id)
{
	Tally__V1__Command *m = cmd(c, NULL);
	BODY(c, m, register_brand, Tally__V1__RegisterBrand, tally__v1__register_brand__init,
	     REGISTER_BRAND);
	register_brand->id = (char *)id;
	register_brand->name = (char *)id;
	register_brand->currency = (char *)"EUR";
	register_brand->expiry_months = 24;
	return m;
}

static Tally__V1__Command *member_cmd(struct cluster *c, const char *id)
{
	Tally__V1__Command *m = cmd(c, NULL);
	BODY(c, m, open_member, Tally__V1__OpenMember, tally__v1__open_member__init, OPEN_MEMBER);
	open_member->id = (char *)id;
	open_member->segment = TALLY__V1__SEGMENT__FAN;
	return m;
}

static Tally__V1__Command *accrue_cmd(struct cluster *c, const char *req, const char *brand,
				      const char *member, int64_t points)
{
	Tally__V1__Command *m = cmd(c, req);
	BODY(c, m, accrue, Tally__V1__Accrue, tally__v1__accrue__init, ACCRUE);
	accrue->brand = (char *)brand;
	accrue->member = (char *)member;
	accrue->points = points;
	accrue->reason = (char *)"";
	accrue->reference = (char *)"";
	return m;
}

/* Brand b1 and one member, through an admin client. */
static void brand_b1_and_member(struct cluster *c, const char *member)
{
	struct tally_client *admin = client(c, "admin");
	send_cmd(c, admin, brand_cmd(c, "b1"), CODE(OK));
	send_cmd(c, admin, member_cmd(c, member), CODE(OK));
	tally_client_close(admin);
}

static Tally__V1__QueryResult *accounts(struct cluster *c, struct tally_client *cl,
					const char *brand, char **members, size_t n, bool stale)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetAccounts g = TALLY__V1__GET_ACCOUNTS__INIT;
	g.brand = (char *)brand;
	g.members = members;
	g.n_members = n;
	q.q_case = TALLY__V1__QUERY__Q_ACCOUNTS;
	q.accounts = &g;
	q.stale = stale;
	Tally__V1__QueryResult *res;
	Tally__V1__ResultCode rc;
	int64_t deadline = now_ms() + HANG_MS;
	while (again(c, rc = tally_client_query(cl, &q, &c->arena, &res), deadline))
		;
	if (rc != CODE(OK))
		fail_msg("query: %s (%s)", tally_result_name(rc), tally_client_error(cl));
	assert_int_equal(res->code, CODE(OK));
	return res;
}

/* One member's account in a brand, by a linearizable read. */
static Tally__V1__Account *account_of(struct cluster *c, struct tally_client *cl,
				      const char *brand, const char *member)
{
	char *who[1] = {(char *)member};
	return accounts(c, cl, brand, who, 1, false)->accounts[0];
}

/* The digest of the node cl is connected to, read there (stale): the transport code. */
static Tally__V1__ResultCode stale_digest(struct cluster *c, struct tally_client *cl,
					  Tally__V1__QueryResult **res)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetDigest g = TALLY__V1__GET_DIGEST__INIT;
	q.q_case = TALLY__V1__QUERY__Q_DIGEST;
	q.digest = &g;
	q.stale = true;
	return tally_client_query(cl, &q, &c->arena, res);
}

static Tally__V1__Digest *digest_of(struct cluster *c, int node)
{
	char addr[32];
	client_addr(c, node, addr, sizeof(addr));
	struct tally_client *cl = connect_to(c, addr, "auditor", secret_of("auditor"));
	Tally__V1__QueryResult *res;
	assert_int_equal(stale_digest(c, cl, &res), CODE(OK));
	tally_client_close(cl);
	return res->digest;
}

/* Every running node reaches the same journal root and state digest. */
static void assert_replicas_equal(struct cluster *c)
{
	int64_t deadline = now_ms() + HANG_MS;
	for (;;) {
		Tally__V1__Digest *first = NULL;
		bool same = true;
		for (int i = 1; i <= NODES_MAX && same; i++) {
			if (c->pid[i] == 0)
				continue;
			Tally__V1__Digest *d = digest_of(c, i);
			if (first == NULL)
				first = d;
			else
				same = d->tree_size == first->tree_size &&
				       memcmp(d->root.data, first->root.data, 32) == 0 &&
				       memcmp(d->state_digest.data, first->state_digest.data, 32) == 0;
		}
		if (same)
			return;
		if (now_ms() > deadline)
			fail_msg("replicas still differ after %d s; logs in %s", HANG_MS / 1000, c->dir);
		struct pollfd none;
		poll(&none, 0, 50);
	}
}

/* GET path from a node's HTTP port; returns the status code and the body in buf. */
static int http_get(struct cluster *c, int node, const char *path, char *buf, size_t cap)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(c->base + 200 + node))};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	char req[128];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
	assert_int_equal(write(fd, req, (size_t)n), n);
	size_t got = 0;
	struct pollfd p = {fd, POLLIN, 0};
	while (got + 1 < cap && poll(&p, 1, 5000) == 1) {
		ssize_t r = read(fd, buf + got, cap - 1 - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	buf[got] = '\0';
	close(fd);
	int status = 0;
	sscanf(buf, "HTTP/1.0 %d", &status);
	return status;
}

/* The body of an HTTP response ("" when there is none). */
static const char *http_text(const char *response)
{
	const char *sep = strstr(response, "\r\n\r\n");
	return sep != NULL ? sep + 4 : "";
}

/* Polls node's /health until it answers `status` with a body starting with `why`;
 * returns the body (static). Fails after HANG_MS. */
static const char *await_health(struct cluster *c, int node, int status, const char *why)
{
	static char body[4096];
	int64_t deadline = now_ms() + HANG_MS;
	for (;;) {
		int got = http_get(c, node, "/health", body, sizeof(body));
		const char *text = http_text(body);
		if (got == status && strncmp(text, why, strlen(why)) == 0)
			return text;
		if (now_ms() > deadline)
			fail_msg("node %d: /health never said %d %s; last %d: %s", node, status, why,
				 got, body);
		struct pollfd none;
		poll(&none, 0, 50);
	}
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_commands_and_rejections_end_to_end_through_the_cluster(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	struct tally_client *admin = client(&c, "admin"), *dealer = client(&c, "dealer");
	struct tally_client *mall = client(&c, "mall");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(ALREADY_EXISTS));
	send_cmd(&c, admin, member_cmd(&c, "alice"), CODE(OK));
	Tally__V1__CommandResult *r = send_cmd(&c, dealer, accrue_cmd(&c, NULL, "b1", "alice", 1000), CODE(OK));
	assert_int_equal(r->available, 1000);
	send_cmd(&c, dealer, accrue_cmd(&c, NULL, "b9", "alice", 5), CODE(UNKNOWN_BRAND));
	send_cmd(&c, dealer, accrue_cmd(&c, NULL, "b1", "nobody", 5), CODE(UNKNOWN_MEMBER));
	send_cmd(&c, dealer, accrue_cmd(&c, NULL, "b1", "alice", 0), CODE(INVALID_ARGUMENT));
	send_cmd(&c, mall, accrue_cmd(&c, NULL, "b1", "alice", 5), CODE(PERMISSION_DENIED));
	/* An idempotent retry, and a conflicting one. */
	send_cmd(&c, dealer, accrue_cmd(&c, "same", "b1", "alice", 7), CODE(OK));
	r = send_cmd(&c, dealer, accrue_cmd(&c, "same", "b1", "alice", 7), CODE(OK));
	assert_true(r->replay);
	send_cmd(&c, dealer, accrue_cmd(&c, "same", "b1", "alice", 8), CODE(IDEMPOTENCY_CONFLICT));
	/* Mall: hold, capture, second resolve, refund. */
	Tally__V1__Command *m = cmd(&c, NULL);
	BODY(&c, m, hold, Tally__V1__Hold, tally__v1__hold__init, HOLD);
	hold->brand = (char *)"b1";
	hold->member = (char *)"alice";
	hold->points = 300;
	hold->reference = (char *)"";
	uint64_t hold_id = send_cmd(&c, mall, m, CODE(OK))->hold_id;
	m = cmd(&c, NULL);
	BODY(&c, m, capture, Tally__V1__Capture, tally__v1__capture__init, CAPTURE);
	capture->hold_id = hold_id;
	uint64_t cap_seq = send_cmd(&c, mall, m, CODE(OK))->entry_seq;
	m = cmd(&c, NULL);
	BODY(&c, m, void_, Tally__V1__Void, tally__v1__void__init, VOID);
	void_->hold_id = hold_id;
	send_cmd(&c, mall, m, CODE(HOLD_RESOLVED));
	m = cmd(&c, NULL);
	BODY(&c, m, reverse, Tally__V1__Reverse, tally__v1__reverse__init, REVERSE);
	reverse->entry_seq = cap_seq;
	reverse->reason = (char *)"";
	send_cmd(&c, mall, m, CODE(OK));
	m = cmd(&c, NULL);
	BODY(&c, m, redeem, Tally__V1__Redeem, tally__v1__redeem__init, REDEEM);
	redeem->brand = (char *)"b1";
	redeem->member = (char *)"alice";
	redeem->points = 100000;
	redeem->reason = redeem->reference = (char *)"";
	send_cmd(&c, mall, m, CODE(INSUFFICIENT_POINTS));
	assert_int_equal(account_of(&c, mall, "b1", "alice")->available, 1007);
	tally_client_close(admin);
	tally_client_close(dealer);
	tally_client_close(mall);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

static Tally__V1__Command *agreement_cmd(struct cluster *c, const char *from, const char *to)
{
	Tally__V1__Command *m = cmd(c, NULL);
	BODY(c, m, set_agreement, Tally__V1__SetAgreement, tally__v1__set_agreement__init,
	     SET_AGREEMENT);
	set_agreement->from_brand = (char *)from;
	set_agreement->to_brand = (char *)to;
	set_agreement->rate_num = 1;
	set_agreement->rate_den = 2;
	set_agreement->max_points = 5000;
	set_agreement->price_micros = 1000;
	set_agreement->active = true;
	return m;
}

static Tally__V1__Command *exchange_cmd(struct cluster *c, const char *from, const char *to,
					int64_t points)
{
	Tally__V1__Command *m = cmd(c, NULL);
	BODY(c, m, exchange, Tally__V1__Exchange, tally__v1__exchange__init, EXCHANGE);
	exchange->from_brand = (char *)from;
	exchange->to_brand = (char *)to;
	exchange->member = (char *)"kim";
	exchange->points = points;
	return m;
}

static Tally__V1__Command *hold_cmd(struct cluster *c, int64_t points, uint32_t timeout_s)
{
	Tally__V1__Command *m = cmd(c, NULL);
	BODY(c, m, hold, Tally__V1__Hold, tally__v1__hold__init, HOLD);
	hold->brand = (char *)"b1";
	hold->member = (char *)"kim";
	hold->points = points;
	hold->timeout_s = timeout_s;
	hold->reference = (char *)"";
	return m;
}

static Tally__V1__Command *capture_cmd(struct cluster *c, uint64_t hold_id)
{
	Tally__V1__Command *m = cmd(c, NULL);
	BODY(c, m, capture, Tally__V1__Capture, tally__v1__capture__init, CAPTURE);
	capture->hold_id = hold_id;
	return m;
}

/* The partner, operator and remaining mall commands with their rejection codes. */
static void test_partner_operator_and_timeout_commands_end_to_end(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	struct tally_client *admin = client(&c, "admin"), *mall = client(&c, "mall");
	struct tally_client *p2 = client(&c, "partner-b2"), *p1 = client(&c, "partner-b1");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, brand_cmd(&c, "b2"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "kim"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "lee"), CODE(OK));
	Tally__V1__Command *m = cmd(&c, NULL);
	BODY(&c, m, update_member, Tally__V1__UpdateMember, tally__v1__update_member__init, UPDATE_MEMBER);
	update_member->id = (char *)"kim";
	update_member->segment = TALLY__V1__SEGMENT__OWNER_COMMERCIAL;
	send_cmd(&c, admin, m, CODE(OK));
	m = cmd(&c, NULL);
	BODY(&c, m, update_brand, Tally__V1__UpdateBrand, tally__v1__update_brand__init, UPDATE_BRAND);
	update_brand->id = (char *)"b9";
	send_cmd(&c, admin, m, CODE(UNKNOWN_BRAND));
	m = cmd(&c, NULL);
	BODY(&c, m, adjust, Tally__V1__Adjust, tally__v1__adjust__init, ADJUST);
	adjust->brand = (char *)"b1";
	adjust->member = (char *)"kim";
	adjust->points = 10000;
	adjust->reason = (char *)"welcome bonus";
	uint64_t adj = send_cmd(&c, admin, m, CODE(OK))->entry_seq;
	/* Transfer, then an exchange under an agreement, its limits, and a settlement. */
	m = cmd(&c, NULL);
	BODY(&c, m, transfer, Tally__V1__Transfer, tally__v1__transfer__init, TRANSFER);
	transfer->brand = (char *)"b1";
	transfer->from_member = (char *)"kim";
	transfer->to_member = (char *)"lee";
	transfer->points = 1000;
	transfer->reason = (char *)"";
	send_cmd(&c, mall, m, CODE(OK));
	send_cmd(&c, p2, exchange_cmd(&c, "b1", "b2", 100), CODE(NO_AGREEMENT));
	send_cmd(&c, admin, agreement_cmd(&c, "b1", "b2"), CODE(OK));
	send_cmd(&c, p2, exchange_cmd(&c, "b1", "b2", 6000), CODE(LIMIT_EXCEEDED));
	Tally__V1__CommandResult *r = send_cmd(&c, p2, exchange_cmd(&c, "b1", "b2", 1001), CODE(OK));
	assert_int_equal(r->points, 500);
	m = cmd(&c, NULL);
	BODY(&c, m, settle, Tally__V1__Settle, tally__v1__settle__init, SETTLE);
	settle->brand_a = (char *)"b1";
	settle->brand_b = (char *)"b2";
	settle->until_ms = INT64_MAX;
	send_cmd(&c, p2, m, CODE(INVALID_ARGUMENT)); /* the future cannot be settled */
	m = cmd(&c, NULL);
	BODY(&c, m, confirm_settlement, Tally__V1__ConfirmSettlement,
	     tally__v1__confirm_settlement__init, CONFIRM_SETTLEMENT);
	confirm_settlement->settlement_id = 999999;
	send_cmd(&c, p2, m, CODE(NOT_FOUND));
	/* Holds: unknown, resolved twice, timed out. */
	send_cmd(&c, mall, capture_cmd(&c, 424242), CODE(HOLD_NOT_FOUND));
	uint64_t h = send_cmd(&c, mall, hold_cmd(&c, 100, 0), CODE(OK))->hold_id;
	send_cmd(&c, mall, capture_cmd(&c, h), CODE(OK));
	send_cmd(&c, mall, capture_cmd(&c, h), CODE(HOLD_RESOLVED));
	h = send_cmd(&c, mall, hold_cmd(&c, 100, 1), CODE(OK))->hold_id;
	/* The leader's expire timer makes batches whose time passes the 1 s timeout: wait
	 * (bounded) until the release is visible, then the capture is too late. */
	int64_t deadline = now_ms() + HANG_MS;
	while (account_of(&c, mall, "b1", "kim")->held != 0) {
		if (now_ms() > deadline)
			fail_msg("a hold with a 1 s timeout was never released");
		struct pollfd none;
		poll(&none, 0, 100); /* pace the polling of the condition */
	}
	send_cmd(&c, mall, capture_cmd(&c, h), CODE(HOLD_EXPIRED));
	/* Reversals: of the adjustment (not reversible), and twice of a redemption. */
	m = cmd(&c, NULL);
	BODY(&c, m, reverse, Tally__V1__Reverse, tally__v1__reverse__init, REVERSE);
	reverse->entry_seq = adj;
	reverse->reason = (char *)"";
	send_cmd(&c, admin, m, CODE(INVALID_ARGUMENT));
	send_cmd(&c, mall, exchange_cmd(&c, "b1", "b2", 100), CODE(PERMISSION_DENIED));
	send_cmd(&c, p1, exchange_cmd(&c, "b1", "b2", 100), CODE(OK)); /* b1 is in its scope */
	tally_client_close(admin);
	tally_client_close(mall);
	tally_client_close(p1);
	tally_client_close(p2);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

static void test_a_follower_redirects_and_a_linearizable_read_sees_the_write(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	uint64_t leader = wait_leader(&c);
	int follower = leader == 1 ? 2 : 1;
	char addr[32];
	client_addr(&c, follower, addr, sizeof(addr));
	struct tally_client *admin = connect_to(&c, addr, "admin", secret_of("admin"));
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK)); /* follows NOT_LEADER */
	send_cmd(&c, admin, member_cmd(&c, "bob"), CODE(OK));
	send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "bob", 42), CODE(OK));
	tally_client_close(admin);
	struct tally_client *reader = connect_to(&c, addr, "auditor", secret_of("auditor"));
	assert_int_equal(account_of(&c, reader, "b1", "bob")->available, 42);
	tally_client_close(reader);
	/* A stale read from the follower says which index it reflects. */
	reader = connect_to(&c, addr, "auditor", secret_of("auditor"));
	Tally__V1__QueryResult *res = accounts(&c, reader, "b1", (char *[]){(char *)"bob"}, 1, true);
	assert_true(res->applied_index > 0);
	tally_client_close(reader);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

static void test_wrong_key_secret_or_scope_is_refused(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	struct tally_client_options o = {.cluster = c.clients, .key_name = "admin",
					 .secret = "wrong-secret-0123456789", .timeout_ms = CLIENT_TIMEOUT_MS,
					 .ca_file = client_ca(&c)};
	struct tally_client *cl = NULL;
	char err[256];
	assert_int_equal(tally_client_open(&cl, &o, err, sizeof(err)), CODE(UNAUTHENTICATED));
	o.key_name = "nobody";
	assert_int_equal(tally_client_open(&cl, &o, err, sizeof(err)), CODE(UNAUTHENTICATED));
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, brand_cmd(&c, "b2"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "carol"), CODE(OK));
	struct tally_client *p1 = client(&c, "partner-b1");
	send_cmd(&c, p1, accrue_cmd(&c, NULL, "b1", "carol", 5), CODE(OK));
	send_cmd(&c, p1, accrue_cmd(&c, NULL, "b2", "carol", 5), CODE(PERMISSION_DENIED));
	struct tally_client *aud = client(&c, "auditor");
	send_cmd(&c, aud, accrue_cmd(&c, NULL, "b1", "carol", 5), CODE(PERMISSION_DENIED));
	tally_client_close(admin);
	tally_client_close(p1);
	tally_client_close(aud);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* Raw frames: what a broken or hostile client may send. */
static int raw_connect(struct cluster *c, int node)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(c->base + 100 + node))};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

/* Reads one response frame (or returns NULL at EOF / after 5 s). */
static Tally__V1__Response *raw_read(int fd)
{
	uint8_t head[4];
	size_t got = 0;
	static uint8_t body[1 << 16];
	struct pollfd p = {fd, POLLIN, 0};
	while (got < 4) {
		if (poll(&p, 1, 5000) <= 0)
			return NULL;
		ssize_t n = read(fd, head + got, 4 - got);
		if (n <= 0)
			return NULL;
		got += (size_t)n;
	}
	uint32_t len = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
	assert_true(len < sizeof(body));
	for (got = 0; got < len;) {
		if (poll(&p, 1, 5000) <= 0)
			return NULL;
		ssize_t n = read(fd, body + got, len - got);
		if (n <= 0)
			return NULL;
		got += (size_t)n;
	}
	return tally__v1__response__unpack(NULL, len, body);
}

/* A "Name:   N kB" line of /proc/PID/status, in KiB. */
static long proc_kb(pid_t pid, const char *name)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	long kb = -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, name, strlen(name)) == 0)
			kb = strtol(line + strlen(name), NULL, 10);
	fclose(f);
	assert_true(kb >= 0);
	return kb;
}

/* Writes one request as a frame. */
static void raw_send(int fd, const Tally__V1__Request *rq)
{
	size_t n = tally__v1__request__get_packed_size(rq);
	uint8_t *buf = malloc(n + TALLY_FRAME_HEADER_BYTES);
	assert_non_null(buf);
	tally__v1__request__pack(rq, buf + TALLY_FRAME_HEADER_BYTES);
	tally_frame_header(buf, (uint32_t)n);
	for (size_t at = 0; at < n + TALLY_FRAME_HEADER_BYTES;) {
		ssize_t w = write(fd, buf + at, n + TALLY_FRAME_HEADER_BYTES - at);
		assert_true(w > 0);
		at += (size_t)w;
	}
	free(buf);
}

/* The key handshake by hand on a plaintext (--insecure) connection. */
static void raw_login(int fd, const char *key)
{
	Tally__V1__Hello hello = TALLY__V1__HELLO__INIT;
	hello.version = 1;
	hello.key_name = (char *)key;
	Tally__V1__Request rq = TALLY__V1__REQUEST__INIT;
	rq.call_id = 1;
	rq.body_case = TALLY__V1__REQUEST__BODY_HELLO;
	rq.hello = &hello;
	raw_send(fd, &rq);
	Tally__V1__Response *res = raw_read(fd);
	assert_non_null(res);
	assert_int_equal(res->body_case, TALLY__V1__RESPONSE__BODY_CHALLENGE);
	uint8_t mac[TALLY_HMAC_BYTES];
	tally_keys_proof(secret_of(key), res->challenge->nonce.data, NULL, key, mac);
	tally__v1__response__free_unpacked(res, NULL);
	Tally__V1__Proof proof = TALLY__V1__PROOF__INIT;
	proof.hmac.data = mac;
	proof.hmac.len = sizeof(mac);
	rq.call_id = 2;
	rq.body_case = TALLY__V1__REQUEST__BODY_PROOF;
	rq.proof = &proof;
	raw_send(fd, &rq);
	res = raw_read(fd);
	assert_non_null(res);
	assert_int_equal(res->body_case, TALLY__V1__RESPONSE__BODY_WELCOME);
	tally__v1__response__free_unpacked(res, NULL);
}

static bool raw_eof(int fd)
{
	struct pollfd p = {fd, POLLIN, 0};
	char b;
	return poll(&p, 1, 5000) == 1 && read(fd, &b, 1) == 0;
}

/* A peer's clock probe (rpc/peerclock.c): a Ping is answered before any handshake,
 * with the node's id and wall clock, and the connection stays usable. */
static void test_a_ping_is_answered_before_the_handshake_with_the_node_id_and_clock(void **state)
{
	(void)state;
	struct cluster c;
	/* raw frames: a plaintext cluster (the TLS path is the same frames, encrypted) */
	cluster_start_with(&c, 3, &(struct cluster_opts){.insecure = true});
	wait_leader(&c);
	int fd = raw_connect(&c, 2);
	for (uint64_t call = 7; call < 9; call++) {
		Tally__V1__Ping ping = TALLY__V1__PING__INIT;
		Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
		req.call_id = call;
		req.body_case = TALLY__V1__REQUEST__BODY_PING;
		req.ping = &ping;
		uint8_t frame[64];
		size_t len = tally__v1__request__get_packed_size(&req);
		tally_frame_header(frame, (uint32_t)len);
		tally__v1__request__pack(&req, frame + TALLY_FRAME_HEADER_BYTES);
		ssize_t n = (ssize_t)(len + TALLY_FRAME_HEADER_BYTES);
		assert_int_equal(write(fd, frame, (size_t)n), n);
		int64_t before = wall_now_ms();
		Tally__V1__Response *res = raw_read(fd);
		assert_non_null(res);
		assert_int_equal(res->call_id, call);
		assert_int_equal(res->code, CODE(OK));
		assert_int_equal(res->body_case, TALLY__V1__RESPONSE__BODY_PONG);
		assert_int_equal(res->pong->node_id, 2);
		assert_true(res->pong->wall_ms >= before - 1000 && res->pong->wall_ms <= wall_now_ms() + 1000);
		tally__v1__response__free_unpacked(res, NULL);
	}
	close(fd);
	cluster_stop(&c);
}

static void test_malformed_and_oversized_frames_are_answered_and_the_cluster_keeps_serving(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.insecure = true}); /* raw frames */
	wait_leader(&c);
	/* Garbage that does not decode. */
	int fd = raw_connect(&c, 1);
	uint8_t junk[] = {0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff};
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	Tally__V1__Response *res = raw_read(fd);
	assert_non_null(res);
	assert_int_equal(res->code, CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(res->message, "frame"));
	tally__v1__response__free_unpacked(res, NULL);
	assert_true(raw_eof(fd));
	close(fd);
	/* An announced length over the limit. */
	fd = raw_connect(&c, 2);
	uint8_t big[] = {0x7f, 0xff, 0xff, 0xff};
	assert_int_equal(write(fd, big, sizeof(big)), 4);
	res = raw_read(fd);
	assert_non_null(res);
	assert_int_equal(res->code, CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(res->message, "limit"));
	tally__v1__response__free_unpacked(res, NULL);
	close(fd);
	/* A truncated frame then a hang-up. */
	fd = raw_connect(&c, 3);
	uint8_t part[] = {0, 0, 0, 40, 1, 2, 3};
	assert_int_equal(write(fd, part, sizeof(part)), (ssize_t)sizeof(part));
	close(fd);
	/* A command before the handshake. */
	fd = raw_connect(&c, 1);
	Tally__V1__Request rq = TALLY__V1__REQUEST__INIT;
	Tally__V1__Command *m = accrue_cmd(&c, NULL, "b1", "x", 1);
	rq.call_id = 9;
	rq.body_case = TALLY__V1__REQUEST__BODY_COMMAND;
	rq.command = m;
	uint8_t buf[512];
	size_t n = tally__v1__request__pack(&rq, buf + 4);
	tally_frame_header(buf, (uint32_t)n);
	assert_int_equal(write(fd, buf, n + 4), (ssize_t)(n + 4));
	res = raw_read(fd);
	assert_non_null(res);
	assert_int_equal(res->code, CODE(UNAUTHENTICATED));
	tally__v1__response__free_unpacked(res, NULL);
	close(fd);
	/* After login, a batch of two million empty commands in one 4 MB frame: refused by
	 * counting on the wire, before protobuf-c would allocate them; the session goes on. */
	fd = raw_connect(&c, 1);
	raw_login(fd, "admin");
	long peak_before = proc_kb(c.pid[1], "VmHWM:");
	enum { FLOOD = 2000000 };
	size_t body = 2 * FLOOD, at = 0;
	uint8_t *flood = malloc(body + 16);
	assert_non_null(flood);
	uint32_t frame = (uint32_t)(2 + 1 + 4 + body); /* call id, batch tag, length, commands */
	tally_frame_header(flood, frame);
	at = TALLY_FRAME_HEADER_BYTES;
	flood[at++] = 0x08, flood[at++] = 77;                 /* call_id 77 */
	flood[at++] = 0x2a;                                   /* field 5 (batch), bytes */
	size_t v = body;
	for (; v >= 0x80; v >>= 7)
		flood[at++] = (uint8_t)(v | 0x80);
	flood[at++] = (uint8_t)v;                             /* 4 bytes of varint */
	for (size_t i = 0; i < FLOOD; i++)
		flood[at++] = 0x0a, flood[at++] = 0x00;           /* commands: one empty each */
	assert_int_equal(at, TALLY_FRAME_HEADER_BYTES + frame);
	for (size_t off = 0; off < at;) {
		ssize_t w = write(fd, flood + off, at - off);
		assert_true(w > 0);
		off += (size_t)w;
	}
	free(flood);
	res = raw_read(fd);
	assert_non_null(res);
	assert_int_equal(res->call_id, 77);
	assert_int_equal(res->code, CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(res->message, "8192"));
	tally__v1__response__free_unpacked(res, NULL);
	/* Decoded, they took over 200 MB: the node's peak grew by the frame's buffers only. */
	long grown = proc_kb(c.pid[1], "VmHWM:") - peak_before;
	if (grown > 100 * 1024)
		fail_msg("node 1's peak memory grew by %ld KiB over the flood", grown);
	Tally__V1__Ping ping = TALLY__V1__PING__INIT;
	rq = (Tally__V1__Request)TALLY__V1__REQUEST__INIT;
	rq.call_id = 78;
	rq.body_case = TALLY__V1__REQUEST__BODY_PING;
	rq.ping = &ping;
	raw_send(fd, &rq);
	res = raw_read(fd);
	assert_non_null(res);
	assert_int_equal(res->call_id, 78);
	tally__v1__response__free_unpacked(res, NULL); /* still open: the ping was answered */
	close(fd);
	/* The cluster still serves. */
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	tally_client_close(admin);
	for (int i = 1; i <= 3; i++)
		assert_true(kill(c.pid[i], 0) == 0);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* Submits `points` with request id `req` until the outcome is definite. */
static Tally__V1__CommandResult *submit_until_definite(struct cluster *c, struct tally_client **cl,
						       const char *req, int64_t points)
{
	int64_t deadline = now_ms() + HANG_MS;
	for (;;) {
		Tally__V1__CommandResult *r = NULL;
		Tally__V1__ResultCode rc = tally_client_command(*cl, accrue_cmd(c, req, "b1", "dora", points),
								&c->arena, &r);
		if (rc == CODE(OK))
			return r;
		if (now_ms() > deadline)
			fail_msg("request %s still %s after %d s", req, tally_result_name(rc), HANG_MS / 1000);
		/* Unknown or unavailable: reconnect (the node may be dead) and retry the same id. */
		tally_client_close(*cl);
		*cl = client(c, "dealer");
	}
}

static void test_retries_across_a_leader_kill_apply_every_request_exactly_once(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	uint64_t leader = wait_leader(&c);
	brand_b1_and_member(&c, "dora");
	struct tally_client *dealer = client(&c, "dealer");
	int64_t total = 0;
	unsigned replays = 0;
	for (int i = 1; i <= 200; i++) {
		if (i == 60)
			node_signal(&c, (int)leader, SIGKILL);
		char req[32];
		snprintf(req, sizeof(req), "stream-%d", i);
		Tally__V1__CommandResult *r = submit_until_definite(&c, &dealer, req, i);
		assert_int_equal(r->code, CODE(OK));
		replays += r->replay;
		total += i;
	}
	/* Every acknowledged accrual is present exactly once. */
	assert_int_equal(account_of(&c, dealer, "b1", "dora")->available, total);
	print_message("200 accruals across a leader kill: %u answered as replays\n", replays);
	tally_client_close(dealer);
	/* The killed node comes back and catches up. */
	node_start(&c, (int)leader, false, false);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* Runs fiu-ctrl COMMAND on node i's process; the command must succeed. */
static void fiu_ctrl(struct cluster *c, int i, const char *command)
{
	char fifo[320], pid[16];
	snprintf(fifo, sizeof(fifo), "%s/fiu", c->dir);
	snprintf(pid, sizeof(pid), "%d", (int)c->pid[i]);
	pid_t p = fork();
	assert_true(p >= 0);
	if (p == 0) {
		execlp("fiu-ctrl", "fiu-ctrl", "-f", fifo, "-c", command, pid, (char *)NULL);
		_exit(127);
	}
	int status;
	assert_int_equal(waitpid(p, &status, 0), p);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("fiu-ctrl -c '%s' on node %d failed (status %d)", command, i, status);
}

/* Whether node i has exited; its exit status goes to *code. */
static bool node_exited(struct cluster *c, int i, int *code)
{
	int status;
	if (waitpid(c->pid[i], &status, WNOHANG) != c->pid[i])
		return false;
	live_remove(c->pid[i]);
	c->pid[i] = 0;
	*code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	return true;
}

/* Regression for jepsen/findings/2026-11-22-idempotence-fsync: raft 0.15 lets a leader
 * whose log write failed truncate its log and reuse the indexes it had already sent,
 * so it applied one batch and the followers another. Here every sync of the leader
 * fails (libfiu EIO); small segments make the leader prepare new ones, and sync them,
 * within a few hundred commands. The leader must exit (status 74) before it applies or
 * acknowledges anything unsynced; the other two carry on, every accrual acknowledged
 * is counted exactly once, and after the restart all three replicas are equal. */
static void test_a_leader_whose_disk_sync_fails_exits_and_nothing_acknowledged_is_lost(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.fiu = true, .segment_kb = "32"});
	int leader = (int)wait_leader(&c);
	brand_b1_and_member(&c, "dora");
	fiu_ctrl(&c, leader, "enable name=posix/io/sync/*");
	struct tally_client *dealer = client(&c, "dealer");
	int64_t total = 0;
	int code = -1, exited_at = 0;
	for (int i = 1; exited_at == 0 || i <= exited_at + 100; i++) {
		if (i > 3000)
			fail_msg("the leader kept running through 3000 commands with failing syncs");
		char req[32];
		snprintf(req, sizeof(req), "sync-%d", i);
		Tally__V1__CommandResult *r = submit_until_definite(&c, &dealer, req, i);
		assert_int_equal(r->code, CODE(OK));
		total += i;
		if (exited_at == 0 && node_exited(&c, leader, &code))
			exited_at = i;
	}
	print_message("leader %d exited with status %d after %d accruals\n", leader, code,
		      exited_at);
	assert_int_equal(code, 74);
	assert_int_equal(account_of(&c, dealer, "b1", "dora")->available, total);
	tally_client_close(dealer);
	node_start(&c, leader, false, false); /* a fresh process: no faults enabled */
	assert_replicas_equal(&c);
	struct tally_client *aud = client(&c, "auditor");
	assert_int_equal(account_of(&c, aud, "b1", "dora")->available, total);
	tally_client_close(aud);
	cluster_stop(&c);
}

/* ---- a full disk ---------------------------------------------------------------------- */

#define SMALL_FS_BYTES (64u << 20)      /* the tmpfs under one node's data directory */
#define SMALL_FS_FREE_BYTES (12u << 20) /* what the filler file leaves the node */
#define FILL_BATCH 256                  /* accruals per batch request */
#define FILL_BATCHES_MAX 2000           /* a node that never fills up: a hang */

/* Mounts a tmpfs of size_bytes on dir. Returns 0, or errno (EPERM: not permitted). */
static int small_fs_mount(const char *dir, size_t size_bytes)
{
	char opts[64];
	snprintf(opts, sizeof(opts), "size=%zuk,mode=0755", size_bytes >> 10);
	if (mount("tally-test", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0)
		return errno;
	snprintf(live_mount, sizeof(live_mount), "%s", dir);
	return 0;
}

/* Writes a file of size_bytes at path (real blocks, not a hole). */
static void filler_write(const char *path, size_t size_bytes)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	int rc = posix_fallocate(fd, 0, (off_t)size_bytes);
	if (rc != 0)
		fail_msg("filler %s: %s", path, strerror(rc));
	close(fd);
}

/* Hands leadership to node `to` (admin TRANSFER, repeated until the status says so). */
static void leader_move_to(struct cluster *c, int to)
{
	struct tally_client *admin = client(c, "admin");
	int64_t deadline = now_ms() + HANG_MS;
	while (wait_leader(c) != (uint64_t)to) {
		if (now_ms() > deadline)
			fail_msg("leadership never moved to node %d", to);
		Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
		a.op = TALLY__V1__ADMIN__OP__TRANSFER;
		a.node_id = (uint64_t)to;
		Tally__V1__Response *res;
		(void)tally_client_admin(admin, &a, &c->arena, &res); /* checked by the status */
	}
	tally_client_close(admin);
}

/* One request of FILL_BATCH accruals of 1 point to dora (ids fill-B-I, with long texts
 * so that the disk fills quickly), retried with the same ids until every command's
 * outcome is definite (a whole request refused, or a command whose leader was lost:
 * TIMEOUT, NOT_LEADER, UNAVAILABLE); every command must end OK (a retry answers from
 * the idempotency record).
 * Returns the points acknowledged. */
static void fill_cmds(struct cluster *c, unsigned b, Tally__V1__Command *cmds[FILL_BATCH])
{
	static char text[TALLY_TEXT_BYTES_MAX + 1];
	memset(text, 'x', TALLY_TEXT_BYTES_MAX);
	for (unsigned i = 0; i < FILL_BATCH; i++) {
		char req[32];
		snprintf(req, sizeof(req), "fill-%u-%u", b, i);
		cmds[i] = accrue_cmd(c, req, "b1", "dora", 1);
		cmds[i]->accrue->reason = cmds[i]->accrue->reference = text;
	}
}

static int64_t fill_batch(struct cluster *c, struct tally_client **cl, unsigned b)
{
	Tally__V1__Command *cmds[FILL_BATCH];
	fill_cmds(c, b, cmds);
	int64_t deadline = now_ms() + HANG_MS;
	for (;;) {
		Tally__V1__BatchResult *res = NULL;
		Tally__V1__ResultCode rc = tally_client_batch(*cl, cmds, FILL_BATCH, &c->arena, &res);
		if (rc == CODE(OK)) {
			assert_int_equal(res->n_results, FILL_BATCH);
			bool again = false;
			for (unsigned i = 0; i < FILL_BATCH; i++) {
				Tally__V1__ResultCode code = res->results[i]->code;
				if (code == CODE(TIMEOUT) || code == CODE(NOT_LEADER) ||
				    code == CODE(UNAVAILABLE))
					again = true; /* unknown or not taken: the same ids again */
				else if (code != CODE(OK))
					fail_msg("fill-%u-%u: %s %s", b, i, tally_result_name(code),
						 res->results[i]->message);
			}
			if (!again)
				return FILL_BATCH;
		}
		if (now_ms() > deadline)
			fail_msg("batch %u still %s after %d s", b, tally_result_name(rc), HANG_MS / 1000);
		tally_client_close(*cl);
		*cl = client(c, "dealer");
	}
}

/* `count` fill batches (ids from b) pipelined on one connection, and leadership moved
 * to node `to` while they are proposed and applied: leadership goes with callers
 * waiting, and the new leader's first apply comes after what it queued as a follower.
 * Each batch is then settled as fill_batch does, with the same ids (a retry answers
 * from the idempotency record). Returns the points acknowledged; *answered_ok: the
 * batches answered OK in full the first time. */
static int64_t fill_batches_across_a_move(struct cluster *c, struct tally_client **cl, unsigned b,
					  unsigned count, int to, unsigned *answered_ok)
{
	for (unsigned k = 0; k < count; k++) {
		Tally__V1__Command *cmds[FILL_BATCH];
		fill_cmds(c, b + k, cmds);
		Tally__V1__CommandList list = TALLY__V1__COMMAND_LIST__INIT;
		list.n_commands = FILL_BATCH;
		list.commands = cmds;
		Tally__V1__Request rq = TALLY__V1__REQUEST__INIT;
		rq.body_case = TALLY__V1__REQUEST__BODY_BATCH;
		rq.batch = &list;
		assert_int_equal(tally_client_send(*cl, &rq), CODE(OK));
	}
	leader_move_to(c, to);
	*answered_ok = 0;
	for (unsigned k = 0; k < count; k++) {
		Tally__V1__Response *res = NULL;
		if (tally_client_recv(*cl, &c->arena, &res) != CODE(OK))
			break; /* the connection went: fill_batch settles the rest */
		bool ok = res->code == CODE(OK) && res->batch != NULL &&
			  res->batch->n_results == FILL_BATCH;
		for (size_t i = 0; ok && i < FILL_BATCH; i++)
			ok = res->batch->results[i]->code == CODE(OK);
		*answered_ok += ok;
	}
	tally_client_close(*cl);
	*cl = client(c, "dealer");
	int64_t total = 0;
	for (unsigned k = 0; k < count; k++)
		total += fill_batch(c, cl, b + k);
	return total;
}

/* The contents of node i's log (the tail of it when longer than cap). */
static void node_log_read(const struct cluster *c, int i, char *buf, size_t cap)
{
	char path[320];
	snprintf(path, sizeof(path), "%s/node%d.log", c->dir, i);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	fseek(f, size > (long)cap - 1 ? size - ((long)cap - 1) : 0, SEEK_SET);
	buf[fread(buf, 1, cap - 1, f)] = '\0';
	fclose(f);
}

/* Issue 8: one node's data directory (raft log and ledger) lives on a small tmpfs and
 * the leader is moved there; writes fill it up. The node must stop cleanly — exit with
 * status 74 (TALLY_NODE_EXIT_IO), never die of SIGBUS (LMDB writes through a shared
 * mapping of a sparse file) — while the other two keep serving and every acknowledged
 * accrual is counted; once space is freed and the node restarts, it catches up and
 * every replica is equal. Skipped where mounting is not permitted. */
static void test_a_node_whose_disk_fills_up_exits_cleanly_and_catches_up_once_space_is_freed(
	void **state)
{
	(void)state;
	struct cluster c;
	cluster_prepare(&c, 3, &(struct cluster_opts){.segment_kb = "1024"}); /* segments larger than a batch */
	char dir[300], filler[320];
	snprintf(dir, sizeof(dir), "%s/node3", c.dir);
	assert_int_equal(mkdir(dir, 0755), 0);
	int err = small_fs_mount(dir, SMALL_FS_BYTES);
	if (err != 0) {
		print_message("SKIPPED: cannot mount a tmpfs for a small disk (%s; needs root or "
			      "CAP_SYS_ADMIN)\n", strerror(err));
		cluster_stop(&c);
		skip();
	}
	snprintf(filler, sizeof(filler), "%s/filler", dir);
	filler_write(filler, SMALL_FS_BYTES - SMALL_FS_FREE_BYTES);
	for (int i = 1; i <= 3; i++)
		node_start(&c, i, true, false);
	leader_move_to(&c, 3);
	brand_b1_and_member(&c, "dora");
	struct tally_client *dealer = client(&c, "dealer");
	int64_t total = 0;
	int status = -1;
	unsigned b = 0, ended_at = 0;
	for (; ended_at == 0 || b < ended_at + 8; b++) {
		if (b == FILL_BATCHES_MAX)
			fail_msg("node 3 still runs after %u accruals on a %u MiB disk", b * FILL_BATCH,
				 SMALL_FS_FREE_BYTES >> 20);
		total += fill_batch(&c, &dealer, b);
		tally_arena_reset(&c.arena);
		if (ended_at == 0 && node_ended(&c, 3, &status))
			ended_at = b + 1;
	}
	char log[1 << 12];
	node_log_read(&c, 3, log, sizeof(log));
	print_message("node 3 ended with status %d after %u accruals; its log ends:\n%s", status,
		      ended_at * FILL_BATCH, log);
	if (status == 128 + SIGBUS)
		fail_msg("node 3 died of SIGBUS on a full disk");
	assert_int_equal(status, 74);
	assert_non_null(strstr(log, "exiting with status 74"));
	int code = -1;
	assert_true(node_exited(&c, 3, &code)); /* reaped */
	assert_int_equal(account_of(&c, dealer, "b1", "dora")->available, total);
	/* Space freed: the node restarts, catches up and matches the others. */
	assert_int_equal(unlink(filler), 0);
	node_start(&c, 3, false, false);
	for (int i = 0; i < 4; i++)
		total += fill_batch(&c, &dealer, b++);
	assert_replicas_equal(&c);
	char addr[32];
	client_addr(&c, 3, addr, sizeof(addr));
	struct tally_client *aud = connect_to(&c, addr, "auditor", secret_of("auditor"));
	char *who[1] = {(char *)"dora"};
	assert_int_equal(accounts(&c, aud, "b1", who, 1, true)->accounts[0]->available, total);
	tally_client_close(aud);
	tally_client_close(dealer);
	cluster_stop(&c);
}

static double metric(struct cluster *c, int i, const char *name);

/* Whether node i's raft directory holds a snapshot raft finished storing (its .meta
 * file is written last). */
static bool snapshot_stored(const struct cluster *c, int i)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/node%d/raft", c->dir, i);
	DIR *d = opendir(path);
	assert_non_null(d);
	bool found = false;
	for (struct dirent *e; !found && (e = readdir(d)) != NULL;)
		found = strncmp(e->d_name, "snapshot-", 9) == 0 && strstr(e->d_name, ".meta") != NULL;
	closedir(d);
	return found;
}

/* Restarted in the same boot, every node keeps its ledger over its snapshot (it holds
 * all of it): nothing restored or checked again (consensus/bootmark.c). */
static void test_sigterm_and_restart_of_every_node_loses_nothing(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "erin"), CODE(OK));
	for (int i = 0; i < 100; i++)
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "erin", 10), CODE(OK));
	tally_client_close(admin);
	for (int i = 1; i <= 3; i++) /* past 64 entries, each node has a snapshot */
		for (int64_t deadline = now_ms() + HANG_MS; !snapshot_stored(&c, i);) {
			if (now_ms() > deadline)
				fail_msg("node %d stored no snapshot", i);
			struct pollfd none;
			poll(&none, 0, 50); /* pace the polling of the condition */
		}
	for (int i = 1; i <= 3; i++)
		node_signal(&c, i, SIGTERM);
	for (int i = 1; i <= 3; i++)
		node_start(&c, i, false, false);
	wait_leader(&c);
	for (int i = 1; i <= 3; i++)
		assert_int_equal(metric(&c, i, "tally_ledger_kept_at_start"), 1);
	struct tally_client *aud = client(&c, "auditor");
	assert_int_equal(account_of(&c, aud, "b1", "erin")->available, 1000);
	tally_client_close(aud);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* The numbers of a /health body's second line ("leader=ADDR applied=N commit=M"). */
static void health_numbers(const char *text, char *leader, size_t cap, unsigned long long *applied,
			   unsigned long long *commit)
{
	const char *line = strchr(text, '\n');
	char fmt[64];
	snprintf(fmt, sizeof(fmt), "leader=%%%zus applied=%%llu commit=%%llu", cap - 1);
	leader[0] = '\0';
	if (line == NULL || sscanf(line + 1, fmt, leader, applied, commit) != 3)
		fail_msg("a /health body without its numbers: %s", text);
}

/* A follower paused while the others commit more than TALLY_NODE_READY_LAG_ENTRIES
 * entries (and take snapshots) catches up once continued. Its /health answers 503 with
 * a documented reason (no leader, no word from the leader, catching up) until it is
 * ready, and 200 once it has caught up. Which 503s a run sees, if any, depends on
 * timing (the node first reads what the leader sent during the pause); that each 503
 * is one of these, and that a caught-up node says 200 with its numbers, does not. */
static void test_a_stopped_node_catches_up_when_continued(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	uint64_t leader = wait_leader(&c);
	int paused = leader == 3 ? 2 : 3;
	node_signal(&c, paused, SIGSTOP);
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "finn"), CODE(OK));
	/* Past the snapshot threshold of 64, and TALLY_NODE_READY_LAG_ENTRIES behind. */
	for (int i = 0; i < TALLY_NODE_READY_LAG_ENTRIES + 100; i++)
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "finn", 1), CODE(OK));
	tally_client_close(admin);
	node_signal(&c, paused, SIGCONT);
	unsigned waits = 0, catching_up = 0;
	for (int64_t deadline = now_ms() + HANG_MS;;) {
		static char body[4096];
		int got = http_get(&c, paused, "/health", body, sizeof(body));
		const char *text = http_text(body);
		if (got == 200 && strncmp(text, "ok\n", 3) == 0)
			break;
		bool known = strncmp(text, "catching up: ", 13) == 0 ||
			     strncmp(text, "no leader\n", 10) == 0 ||
			     strncmp(text, "no word from the leader for ", 28) == 0;
		if (got != 503 || !known || now_ms() > deadline)
			fail_msg("node %d /health: %d %s", paused, got, text);
		waits++;
		catching_up += text[0] == 'c';
		struct pollfd none;
		poll(&none, 0, 5);
	}
	print_message("node %d: /health said 503 %u times (%u catching up) before ok\n", paused,
		      waits, catching_up);
	assert_replicas_equal(&c);
	char addr[64];
	unsigned long long applied = 0, commit = 0;
	health_numbers(await_health(&c, paused, 200, "ok\n"), addr, sizeof(addr), &applied, &commit);
	assert_true(applied >= TALLY_NODE_READY_LAG_ENTRIES + 100);
	assert_true(commit - applied <= TALLY_NODE_READY_LAG_ENTRIES);
	cluster_stop(&c);
}

/* ---- operations ---------------------------------------------------------------------- */

static void wait_metric_at_least(struct cluster *c, int i, const char *name, double min);
static void node_log_read(const struct cluster *c, int i, char *buf, size_t cap);

static void test_sighup_reloads_keys_without_restart(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	/* Sessions open on node 1 before the reload: the mall key's is ended by it (its
	 * secret changes), the dealer's (unchanged) carries on, on the same connection. */
	char one[32];
	client_addr(&c, 1, one, sizeof(one));
	struct tally_client *mall_session = connect_to(&c, one, "mall", secret_of("mall"));
	struct tally_client *dealer_session = connect_to(&c, one, "dealer", secret_of("dealer"));
	write_keys_with(&c, "rotated-mall-secret-0123456789");
	for (int i = 1; i <= 3; i++)
		node_signal(&c, i, SIGHUP);
	static char log[8192];
	for (int64_t deadline = now_ms() + HANG_MS;;) { /* node 1 says when it reloaded */
		node_log_read(&c, 1, log, sizeof(log));
		if (strstr(log, "SIGHUP: reloaded") != NULL)
			break;
		if (now_ms() > deadline)
			fail_msg("node 1 never logged its keys reload");
	}
	Tally__V1__QueryResult *res;
	assert_int_equal(stale_digest(&c, mall_session, &res), CODE(UNAUTHENTICATED));
	assert_int_equal(stale_digest(&c, dealer_session, &res), CODE(OK));
	assert_int_equal(metric(&c, 1, "tally_sessions_revoked_total"), 1); /* the mall's only */
	tally_client_close(mall_session);
	tally_client_close(dealer_session);
	/* The old secret is refused and the new one accepted, once every node reloaded:
	 * poll the condition rather than guess when the signal was handled. */
	struct tally_client_options o = {.cluster = c.clients, .key_name = "mall",
					 .timeout_ms = CLIENT_TIMEOUT_MS, .ca_file = client_ca(&c)};
	char err[256];
	int64_t deadline = now_ms() + HANG_MS;
	for (int i = 1; i <= 3; i++) {
		char addr[32];
		client_addr(&c, i, addr, sizeof(addr));
		o.cluster = addr;
		for (;;) {
			struct tally_client *cl = NULL;
			o.secret = "rotated-mall-secret-0123456789";
			Tally__V1__ResultCode rc = tally_client_open(&cl, &o, err, sizeof(err));
			if (rc == CODE(OK)) {
				tally_client_close(cl);
				break;
			}
			if (now_ms() > deadline)
				fail_msg("node %d never accepted the rotated key: %s", i, err);
		}
		o.secret = secret_of("mall");
		struct tally_client *old = NULL;
		assert_int_equal(tally_client_open(&old, &o, err, sizeof(err)), CODE(UNAUTHENTICATED));
	}
	for (int i = 1; i <= 3; i++)
		assert_true(kill(c.pid[i], 0) == 0);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* Sends n member openings (ids PREFIX-0, PREFIX-1, ...) pipelined on cl. */
static void pipeline_members(struct cluster *c, struct tally_client *cl, const char *prefix, int n)
{
	for (int i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "%s-%d", prefix, i);
		Tally__V1__Request rq = TALLY__V1__REQUEST__INIT;
		rq.body_case = TALLY__V1__REQUEST__BODY_COMMAND;
		rq.command = member_cmd(c, tally_arena_strdup(&c->arena, id));
		assert_int_equal(tally_client_send(cl, &rq), CODE(OK));
	}
}

/* More requests pipelined on one connection to the leader than a connection may have
 * in the node (1024, rpc/server.c): the node stops reading it until answers go out
 * (counted in tally_connection_reads_paused_total), and every request is answered.
 * The followers are stopped while the requests go in, so that none can be answered
 * before the node holds 1024 of them (a node that answers as fast as a slow client
 * sends never gets there); the test's cluster has an election timeout long enough for
 * the leader to keep its place meanwhile. */
static void assert_pipelining_is_throttled_not_refused(struct cluster *c, int leader)
{
	enum { PIPELINED = 1500 }; /* past 1024; the rest fits in the socket's buffers */
	char addr[32];
	client_addr(c, leader, addr, sizeof(addr));
	struct tally_client *cl = connect_to(c, addr, "admin", secret_of("admin"));
	double paused = metric(c, leader, "tally_connection_reads_paused_total");
	int others[2] = {leader == 1 ? 2 : 1, leader == 3 ? 2 : 3};
	for (int k = 0; k < 2; k++)
		node_signal(c, others[k], SIGSTOP);
	pipeline_members(c, cl, "piped", PIPELINED);
	int64_t deadline = now_ms() + HANG_MS;
	while (metric(c, leader, "tally_connection_reads_paused_total") <= paused) {
		if (now_ms() > deadline)
			fail_msg("the leader never paused reading a connection with %d requests", PIPELINED);
		struct pollfd none;
		poll(&none, 0, 20); /* pace the polling of the condition */
	}
	for (int k = 0; k < 2; k++)
		node_signal(c, others[k], SIGCONT);
	for (int i = 0; i < PIPELINED; i++) {
		Tally__V1__Response *res = NULL;
		assert_int_equal(tally_client_recv(cl, &c->arena, &res), CODE(OK));
		assert_int_equal(res->code, CODE(OK));
		assert_non_null(res->result);
		assert_int_equal(res->result->code, CODE(OK));
	}
	tally_client_close(cl);
}

/* tally_client_wait counts an answer as there once its bytes are in the client, even
 * when they are still encrypted in the TLS session and the socket is empty: 1000
 * answers (more than one 16 KiB TLS record) are all written by the leader before the
 * client reads any, so its first read takes several records off the socket at once. */
static void assert_wait_sees_answers_held_in_tls(struct cluster *c, int leader)
{
	enum { PIPELINED = 1000 }; /* under the node's 1024 per connection: none held back */
	char addr[32];
	client_addr(c, leader, addr, sizeof(addr));
	struct tally_client *cl = connect_to(c, addr, "admin", secret_of("admin"));
	double applied = metric(c, leader, "tally_commands_total");
	pipeline_members(c, cl, "waited", PIPELINED);
	int64_t deadline = now_ms() + HANG_MS;
	while (metric(c, leader, "tally_commands_total") < applied + PIPELINED) {
		if (now_ms() > deadline)
			fail_msg("the leader did not apply %d pipelined commands", PIPELINED);
		struct pollfd none;
		poll(&none, 0, 20); /* pace the polling of the condition */
	}
	for (int i = 0; i < PIPELINED; i++) {
		Tally__V1__Response *res = NULL;
		if (tally_client_wait(cl, (int64_t)CLIENT_TIMEOUT_MS * 1000) != 1)
			fail_msg("answer %d of %d, already sent, not seen by tally_client_wait", i + 1,
				 PIPELINED);
		assert_int_equal(tally_client_recv(cl, &c->arena, &res), CODE(OK));
		assert_int_equal(res->code, CODE(OK));
	}
	tally_client_close(cl);
}

/* Followers apply entries of 16 KiB or more on their applier (consensus/applier.c),
 * while raft already counts them applied. Batches of FILL_BATCH accruals (entries of
 * ~150 KB) go on while leadership moves to a follower with batches pipelined (its
 * first apply as leader comes after what it queued), a follower is killed and started
 * again (it replays through its queue), and every node snapshots every 64 entries (a
 * snapshot waits for the queue). Each applier waits 10 ms before every entry, so that
 * the queue is seldom empty when those come. Every acknowledged accrual counts once,
 * and the replicas end equal. */
static void test_followers_apply_large_entries_on_a_thread_through_moves_and_kills(void **state)
{
	(void)state;
	enum { ROUND = 20, PIPELINED = 8 };
	struct cluster c;
	setenv(NODE_APPLIER_DELAY_ENV, "10", 1); /* the nodes inherit it */
	cluster_start(&c, 3);
	int leader = (int)wait_leader(&c);
	brand_b1_and_member(&c, "dora");
	struct tally_client *dealer = client(&c, "dealer");
	int64_t total = 0;
	unsigned b = 0;
	while (b < ROUND)
		total += fill_batch(&c, &dealer, b++);
	int next = leader == 1 ? 2 : 1;
	assert_true(metric(&c, next, "tally_entries_applied_off_loop_total") > 0);
	assert_true(metric(&c, leader, "tally_entries_applied_off_loop_total") == 0);
	unsigned answered_ok;
	total += fill_batches_across_a_move(&c, &dealer, b, PIPELINED, next, &answered_ok);
	b += PIPELINED;
	while (b < 2 * ROUND)
		total += fill_batch(&c, &dealer, b++);
	int victim = next == 3 ? 1 : 3; /* a follower of the new leader */
	node_signal(&c, victim, SIGKILL);
	while (b < 3 * ROUND)
		total += fill_batch(&c, &dealer, b++);
	node_start(&c, victim, false, false);
	while (b < 4 * ROUND)
		total += fill_batch(&c, &dealer, b++);
	assert_int_equal(account_of(&c, dealer, "b1", "dora")->available, total);
	tally_client_close(dealer);
	assert_replicas_equal(&c);
	print_message("%lld accruals in %u batches of %d across a leader move (%u of %d "
		      "pipelined batches answered OK across it) and a follower kill; applied off "
		      "the loop: %.0f, %.0f, %.0f entries; longest loop stalls %.3f, %.3f, %.3f s\n",
		      (long long)total, b, FILL_BATCH, answered_ok, PIPELINED,
		      metric(&c, 1, "tally_entries_applied_off_loop_total"),
		      metric(&c, 2, "tally_entries_applied_off_loop_total"),
		      metric(&c, 3, "tally_entries_applied_off_loop_total"),
		      metric(&c, 1, "tally_loop_stall_max_seconds"),
		      metric(&c, 2, "tally_loop_stall_max_seconds"),
		      metric(&c, 3, "tally_loop_stall_max_seconds"));
	cluster_stop(&c);
	unsetenv(NODE_APPLIER_DELAY_ENV);
}

static void test_metrics_and_health_are_served_over_http(void **state)
{
	(void)state;
	struct cluster c;
	/* 3 s elections: the leader keeps its place while the pipelining check stops both
	 * followers (assert_pipelining_is_throttled_not_refused) */
	cluster_start_with(&c, 3, &(struct cluster_opts){.election_ms = "3000"});
	uint64_t leader = wait_leader(&c);
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(ALREADY_EXISTS));
	tally_client_close(admin);
	static char body[1 << 16];
	assert_int_equal(http_get(&c, (int)leader, "/metrics", body, sizeof(body)), 200);
	assert_non_null(strstr(body, "tally_raft_commits_total"));
	assert_non_null(strstr(body, "tally_apply_seconds_bucket"));
	/* the two commands' rounds, timed by the leader that proposed them */
	const char *commits = strstr(body, "\ntally_commit_seconds_count ");
	assert_non_null(commits);
	assert_true(strtoull(commits + strlen("\ntally_commit_seconds_count "), NULL, 10) >= 2);
	assert_non_null(strstr(body, "tally_raft_leader 1"));
	assert_non_null(strstr(body, "tally_results_total{code=\"ALREADY_EXISTS\"} 1"));
	assert_int_equal(http_get(&c, (int)leader, "/nope", body, sizeof(body)), 404);
	assert_pipelining_is_throttled_not_refused(&c, (int)leader);
	assert_wait_sees_answers_held_in_tls(&c, (int)leader);
	/* Ready everywhere once every node heard of the leader's commits. */
	for (int i = 1; i <= 3; i++)
		print_message("node %d /health: %s", i, await_health(&c, i, 200, "ok\n"));
	/* A node alone: its leader (itself or another) is gone, and it says so. */
	int alone = (int)leader, others[2] = {leader == 1 ? 2 : 1, leader == 3 ? 2 : 3};
	for (int k = 0; k < 2; k++)
		node_signal(&c, others[k], SIGSTOP);
	print_message("node %d alone: %s", alone, await_health(&c, alone, 503, "no leader\n"));
	for (int k = 0; k < 2; k++)
		node_signal(&c, others[k], SIGCONT);
	await_health(&c, alone, 200, "ok\n");
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* The size of node i's LMDB file. */
static off_t ledger_file_bytes(const struct cluster *c, int i)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/node%d/ledger/data.mdb", c->dir, i);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* The files in node i's directory `sub` (names and bytes), hashed in name order;
 * *n: how many. */
static void dir_files_hash(const struct cluster *c, int i, const char *sub, uint8_t out[32],
			   size_t *n)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/node%d/%s", c->dir, i, sub);
	struct dirent **names;
	int count = scandir(path, &names, NULL, alphasort);
	assert_true(count >= 0);
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	assert_non_null(h);
	assert_int_equal(EVP_DigestInit_ex(h, EVP_sha256(), NULL), 1);
	*n = 0;
	for (int k = 0; k < count; k++) {
		if (names[k]->d_name[0] != '.') {
			char file[700];
			snprintf(file, sizeof(file), "%s/%s", path, names[k]->d_name);
			FILE *f = fopen(file, "rb");
			assert_non_null(f);
			EVP_DigestUpdate(h, names[k]->d_name, strlen(names[k]->d_name) + 1);
			uint8_t buf[65536];
			for (size_t got; (got = fread(buf, 1, sizeof(buf), f)) > 0;)
				EVP_DigestUpdate(h, buf, got);
			fclose(f);
			(*n)++;
		}
		free(names[k]);
	}
	free(names);
	assert_int_equal(EVP_DigestFinal_ex(h, out, NULL), 1);
	EVP_MD_CTX_free(h);
}

/* A follower down while the leader snapshots (every 64 entries, 16 kept behind each by
 * default) is not sent a snapshot when it comes back: the leader kept the log from
 * where the follower stood, and it catches up from there. */
static void test_a_follower_back_from_an_outage_catches_up_from_the_log(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.snapshot_trailing = "16"});
	uint64_t leader = wait_leader(&c);
	int back = leader == 3 ? 1 : 3;
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "ivy"), CODE(OK));
	assert_replicas_equal(&c); /* the leader has heard from it: it knows where it stands */
	double failed = metric(&c, (int)leader, "tally_raft_connect_failures_total");
	node_signal(&c, back, SIGKILL);
	/* Several snapshots on the two nodes up. Past a failed attempt to reach it the
	 * leader no longer holds every message for it (only the 3 newest): the entries
	 * after that must come from the log. (The first attempt fails at once, before
	 * anything was queued; the second 1 s later.) */
	for (int i = 0; i < 300; i++) {
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "ivy", 1), CODE(OK));
		if (i == 50)
			wait_metric_at_least(&c, (int)leader, "tally_raft_connect_failures_total",
					     failed + 2);
	}
	assert_true(metric(&c, (int)leader, "tally_snapshots_kept_log_total") >= 1);
	assert_true(metric(&c, (int)leader, "tally_snapshot_trailing_entries") > 64);
	node_start(&c, back, false, false);
	send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "ivy", 1), CODE(OK));
	assert_replicas_equal(&c);
	assert_int_equal(metric(&c, back, "tally_install_snapshots_received_total"), 0);
	/* raft applied the entries it caught up on in a few passes, each pass in one
	 * transaction (consensus/fsm.c): many entries a transaction */
	double groups = metric(&c, back, "tally_apply_groups_total");
	double grouped = metric(&c, back, "tally_apply_group_entries_total");
	print_message("the follower back applied %.0f entries in %.0f transactions\n", grouped, groups);
	assert_true(groups >= 1 && grouped >= 300 && grouped >= 4 * groups);
	/* all caught up, a later snapshot of the leader's keeps the default again */
	for (int64_t deadline = now_ms() + HANG_MS;
	     metric(&c, (int)leader, "tally_snapshot_trailing_entries") != 16;) {
		if (now_ms() > deadline)
			fail_msg("the leader's snapshots still keep more than 16 entries");
		for (int i = 0; i < 8; i++)
			send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "ivy", 1), CODE(OK));
	}
	tally_client_close(admin);
	cluster_stop(&c);
}

/* Node 3 runs --ledger-pwrite, the others write through the map: the two ways of
 * writing LMDB's pages make the same replica, whether node 3 is the one wiped (and
 * restores the snapshot) or the leader (and takes it). Journal segments of 16 KiB: the
 * leader's snapshot names its closed segments, so the InstallSnapshot must carry them
 * (the appendix) to a node that has none. */
static void test_a_wiped_node_rejoins_and_catches_up_by_snapshot(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.pwrite_node = 3,
							  .journal_segment_kb = "16"});
	uint64_t leader = wait_leader(&c);
	int wiped = leader == 3 ? 1 : 3;
	node_signal(&c, wiped, SIGTERM);
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/node%d", c.dir, wiped);
	fx_remove_dir(dir);
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "gus"), CODE(OK));
	for (int i = 0; i < 300; i++) /* several snapshots past the threshold of 64 */
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "gus", 1), CODE(OK));
	tally_client_close(admin);
	node_start(&c, wiped, false, true); /* empty directory, no bootstrap */
	assert_replicas_equal(&c);
	/* the leader's snapshot came into a mapping of a file, not the heap */
	assert_true(metric(&c, wiped, "tally_install_snapshot_bytes_mapped_total") > 0);
	/* It named closed segments the leader linked; the wiped node holds the same. */
	uint8_t a[32], b[32];
	size_t links, na, nb;
	dir_files_hash(&c, (int)leader, "snapshot-segments", a, &links);
	assert_true(links >= 2);
	dir_files_hash(&c, (int)leader, "ledger/journal", a, &na);
	dir_files_hash(&c, wiped, "ledger/journal", b, &nb);
	print_message("leader: %zu segments, %zu linked for snapshots\n", na, links);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, 32);
	/* and says so: segments linked, and their bytes sent after the InstallSnapshot */
	assert_true(metric(&c, (int)leader, "tally_journal_segments_linked_total") >= 1);
	assert_true(metric(&c, (int)leader, "tally_journal_segment_bytes_linked_total") >= 16384 / 2);
	double sent = 0;
	for (int i = 1; i <= 3; i++)
		if (i != wiped)
			sent += metric(&c, i, "tally_snapshot_appendix_bytes_total");
	assert_true(sent >= 16384 / 2);
	/* The leader writes a closed segment back to its end once its tick sees the next
	 * one (writeback.c): at least the first segment's 16 KiB. */
	wait_metric_at_least(&c, (int)leader, "tally_journal_writeback_bytes_total", 16384 / 2);
	/* A writable map is as long as its allocated room (64 MiB at least); pwrite grows
	 * the file only by the pages written. */
	assert_true(ledger_file_bytes(&c, 3) < (off_t)16 << 20);
	assert_true(ledger_file_bytes(&c, 1) >= (off_t)64 << 20);
	cluster_stop(&c);
}

/* A follower whose raft log and ledger are lost while the others go on, but whose
 * links of closed journal segments are kept, is sent an InstallSnapshot without the
 * segments it holds: it told the leader which (its Have, consensus/tlsnet.c). (A
 * follower merely stopped for a moment is sent the entries queued for it instead.) */
static void test_a_node_that_kept_its_links_is_not_sent_the_segments_it_holds(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.journal_segment_kb = "16"});
	uint64_t leader = wait_leader(&c);
	int back = leader == 3 ? 1 : 3;
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "hal"), CODE(OK));
	for (int i = 0; i < 300; i++)
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "hal", 1), CODE(OK));
	/* the follower's own snapshots linked closed segments */
	wait_metric_at_least(&c, back, "tally_journal_segments_linked_total", 2);
	node_signal(&c, back, SIGTERM);
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/node%d/raft", c.dir, back);
	fx_remove_dir(dir);
	snprintf(dir, sizeof(dir), "%s/node%d/ledger", c.dir, back);
	fx_remove_dir(dir);
	for (int i = 0; i < 300; i++)
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "hal", 1), CODE(OK));
	tally_client_close(admin);
	node_start(&c, back, false, true); /* no log, no ledger: it joins */
	assert_replicas_equal(&c);
	assert_true(metric(&c, back, "tally_install_snapshots_received_total") >= 1);
	double held = 0, held_bytes = 0, sent = 0;
	for (int i = 1; i <= 3; i++)
		if (i != back) {
			held += metric(&c, i, "tally_snapshot_segments_held_total");
			held_bytes += metric(&c, i, "tally_snapshot_segment_bytes_held_total");
			sent += metric(&c, i, "tally_snapshot_appendix_bytes_total");
		}
	print_message("node %d was sent %.0f bytes of segments; %.0f segments (%.0f bytes) it "
		      "held were left out\n", back, sent, held, held_bytes);
	assert_true(held >= 2);
	assert_true(held_bytes >= 16384);
	assert_int_equal(metric(&c, back, "tally_snapshots_declined_total"), 0);
	/* what it was sent it links once the restore's check passed, not at its next
	 * snapshot: so that a second install would leave those out too */
	wait_metric_at_least(&c, back, "tally_journal_segments_linked_total", 1);
	uint8_t a[32], b[32];
	size_t na, nb;
	dir_files_hash(&c, (int)leader, "ledger/journal", a, &na);
	dir_files_hash(&c, back, "ledger/journal", b, &nb);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, 32);
	cluster_stop(&c);
}

/* One membership operation: the transport outcome must be OK (the node answered the
 * operation), and the answer's code `want`. */
static void admin_expect(struct cluster *c, struct tally_client *cl, Tally__V1__Admin__Op op,
			 uint64_t id, const char *address, uint32_t role, Tally__V1__ResultCode want)
{
	Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
	a.op = op;
	a.node_id = id;
	a.address = (char *)address;
	a.role = role;
	Tally__V1__Response *res = NULL;
	Tally__V1__ResultCode rc = tally_client_admin(cl, &a, &c->arena, &res);
	if (rc != CODE(OK) || res->code != want)
		fail_msg("admin op %d on node %llu: %s / %s (%s), expected OK / %s", (int)op,
			 (unsigned long long)id, tally_result_name(rc),
			 res != NULL ? tally_result_name(res->code) : "-", tally_client_error(cl),
			 tally_result_name(want));
}

/* Every cluster operation is refused to a brand's admin, who also sees no node
 * addresses; an operator key may run the cluster and nothing in the ledger. */
static void assert_cluster_ops_need_an_operator(struct cluster *c, uint64_t leader)
{
	char address[96];
	snprintf(address, sizeof(address), "127.0.0.1:%d|127.0.0.1:%d", c->base + 5, c->base + 105);
	uint64_t other = leader == 2 ? 3 : 2;
	struct tally_client *brand_admin = client(c, "admin-b1");
	admin_expect(c, brand_admin, TALLY__V1__ADMIN__OP__ADD, 5, address, 0, CODE(PERMISSION_DENIED));
	admin_expect(c, brand_admin, TALLY__V1__ADMIN__OP__ASSIGN, other, "", 2, CODE(PERMISSION_DENIED));
	admin_expect(c, brand_admin, TALLY__V1__ADMIN__OP__REMOVE, other, "", 0, CODE(PERMISSION_DENIED));
	admin_expect(c, brand_admin, TALLY__V1__ADMIN__OP__TRANSFER, other, "", 0, CODE(PERMISSION_DENIED));
	Tally__V1__Status *st = status(c, brand_admin);
	assert_int_equal(st->leader->id, leader);
	assert_int_equal(st->n_nodes, 3);
	for (size_t i = 0; i < st->n_nodes; i++) {
		assert_string_equal(st->nodes[i]->address, "");
		assert_string_equal(st->nodes[i]->client_address, "");
	}
	tally_client_close(brand_admin);
	struct tally_client *op = client(c, "operator");
	st = status(c, op);
	for (size_t i = 0; i < st->n_nodes; i++)
		assert_true(strlen(st->nodes[i]->address) > 0);
	send_cmd(c, op, member_cmd(c, "opal"), CODE(PERMISSION_DENIED));
	tally_client_close(op);
}

static void test_membership_add_promote_and_remove(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	uint64_t leader = wait_leader(&c);
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	/* Refusals change nothing and say why, as answers (not transport failures). */
	char taken[96];
	snprintf(taken, sizeof(taken), "127.0.0.1:%d|127.0.0.1:%d", c.base + 2, c.base + 102);
	admin_expect(&c, admin, TALLY__V1__ADMIN__OP__REMOVE, 9, "", 0, CODE(NOT_FOUND));
	admin_expect(&c, admin, TALLY__V1__ADMIN__OP__ADD, 2, taken, 0, CODE(ALREADY_EXISTS));
	admin_expect(&c, admin, TALLY__V1__ADMIN__OP__ASSIGN, 2, "", 1, CODE(ALREADY_EXISTS));
	admin_expect(&c, admin, TALLY__V1__ADMIN__OP__ASSIGN, 2, "", 7, CODE(INVALID_ARGUMENT));
	admin_expect(&c, admin, TALLY__V1__ADMIN__OP__TRANSFER, leader, "", 0,
		     CODE(INVALID_ARGUMENT));
	struct tally_client *mall = client(&c, "mall");
	admin_expect(&c, mall, TALLY__V1__ADMIN__OP__REMOVE, 2, "", 0, CODE(PERMISSION_DENIED));
	tally_client_close(mall);
	assert_cluster_ops_need_an_operator(&c, leader);
	/* A 4th node joins empty, is added and promoted to voter by an operator key. */
	node_start(&c, 4, false, true);
	tally_client_close(admin);
	admin = client(&c, "operator");
	Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
	char address[96];
	snprintf(address, sizeof(address), "127.0.0.1:%d|127.0.0.1:%d", c.base + 4, c.base + 104);
	a.op = TALLY__V1__ADMIN__OP__ADD;
	a.node_id = 4;
	a.address = address;
	Tally__V1__Response *res;
	assert_int_equal(tally_client_admin(admin, &a, &c.arena, &res), CODE(OK));
	assert_int_equal(res->code, CODE(OK));
	a.op = TALLY__V1__ADMIN__OP__ASSIGN;
	a.role = 1; /* voter */
	a.address = (char *)"";
	assert_int_equal(tally_client_admin(admin, &a, &c.arena, &res), CODE(OK));
	assert_int_equal(res->code, CODE(OK));
	/* Another node (not the leader) is removed and stopped. */
	int gone = leader == 2 ? 3 : 2;
	a.op = TALLY__V1__ADMIN__OP__REMOVE;
	a.node_id = (uint64_t)gone;
	assert_int_equal(tally_client_admin(admin, &a, &c.arena, &res), CODE(OK));
	assert_int_equal(res->code, CODE(OK));
	node_signal(&c, gone, SIGTERM);
	tally_client_close(admin);
	admin = client(&c, "admin");
	send_cmd(&c, admin, member_cmd(&c, "hana"), CODE(OK));
	Tally__V1__Status *st = status(&c, admin);
	bool has4 = false, has_gone = false;
	for (size_t i = 0; i < st->n_nodes; i++) {
		has4 |= st->nodes[i]->id == 4 && strcmp(st->nodes[i]->role, "voter") == 0;
		has_gone |= st->nodes[i]->id == (uint64_t)gone;
	}
	assert_true(has4);
	assert_false(has_gone);
	tally_client_close(admin);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* ---- ledger time under clock faults (consensus/clock.h) ------------------------------ */

/* A metric's value from node i's /metrics (fails when it is missing). */
static double metric(struct cluster *c, int i, const char *name)
{
	static char body[65536];
	assert_int_equal(http_get(c, i, "/metrics", body, sizeof(body)), 200);
	assert_true(strlen(body) + 1 < sizeof(body)); /* the whole page */
	char pattern[128];
	snprintf(pattern, sizeof(pattern), "\n%s ", name);
	const char *at = strstr(body, pattern);
	if (at == NULL)
		fail_msg("node %d's /metrics has no %s", i, name);
	return strtod(at + strlen(pattern), NULL);
}

/* Waits until node i reports its wall clock at least min_s seconds off the cluster's,
 * with the clocks synchronized: the node has seen its step and been outvoted. */
/* Waits until node i's metric `name` reaches min (what the node's tick does next). */
static void wait_metric_at_least(struct cluster *c, int i, const char *name, double min)
{
	int64_t deadline = now_ms() + HANG_MS;
	while (metric(c, i, name) < min) {
		if (now_ms() > deadline)
			fail_msg("node %d: %s never reached %.0f", i, name, min);
		struct pollfd none;
		poll(&none, 0, 50); /* pace the polling of the condition */
	}
}

static void wait_clock_off(struct cluster *c, int i, double min_s)
{
	int64_t deadline = now_ms() + HANG_MS;
	while (metric(c, i, "tally_clock_synchronized") != 1 ||
	       metric(c, i, "tally_clock_offset_seconds") < min_s) {
		if (now_ms() > deadline)
			fail_msg("node %d never saw its clock %.0f s off the cluster's", i, min_s);
		struct pollfd none;
		poll(&none, 0, 50); /* pace the polling of the condition */
	}
}

/* Ledger time, as the leader's next batch stamps it, is not ahead of real time by more
 * than the documented bound; a hold taken before the fault still captures. */
static void assert_time_bounded_and_capture(struct cluster *c, struct tally_client *dealer,
					    struct tally_client *mall, uint64_t hold)
{
	send_cmd(c, dealer, accrue_cmd(c, NULL, "b1", "kim", 1), CODE(OK));
	int leader = (int)wait_leader(c);
	Tally__V1__Digest *d = digest_of(c, leader);
	int64_t ahead_ms = d->time_ms - wall_now_ms();
	if (ahead_ms > CLOCK_ERROR_MAX_MS)
		fail_msg("ledger time is %lld ms ahead of real time (bound %d ms)",
			 (long long)ahead_ms, CLOCK_ERROR_MAX_MS);
	send_cmd(c, mall, capture_cmd(c, hold), CODE(OK));
}

/* libfaketime moves wall clocks: a leader's steps an hour ahead, then a follower an
 * hour ahead wins leadership. Neither releases a 120 s hold taken before. */
static void test_a_leader_an_hour_ahead_by_step_or_at_election_releases_no_hold(void **state)
{
	(void)state;
	if (access(FAKETIME_LIB, R_OK) != 0) {
		print_message("skipped: %s is missing (Debian package libfaketime)\n", FAKETIME_LIB);
		skip();
	}
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.faketime = true});
	int leader = (int)wait_leader(&c);
	struct tally_client *admin = client(&c, "admin"), *dealer = client(&c, "dealer");
	struct tally_client *mall = client(&c, "mall");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "kim"), CODE(OK));
	send_cmd(&c, dealer, accrue_cmd(&c, NULL, "b1", "kim", 1000), CODE(OK));
	/* The leader's clock steps an hour ahead while it leads. */
	uint64_t h1 = send_cmd(&c, mall, hold_cmd(&c, 100, 120), CODE(OK))->hold_id;
	clock_set(&c, leader, "+1h");
	wait_clock_off(&c, leader, 3500);
	assert_time_bounded_and_capture(&c, dealer, mall, h1);
	clock_set(&c, leader, "+0");
	/* A follower an hour ahead becomes leader. */
	int next = leader == 1 ? 2 : 1;
	uint64_t h2 = send_cmd(&c, mall, hold_cmd(&c, 100, 120), CODE(OK))->hold_id;
	clock_set(&c, next, "+1h");
	Tally__V1__Admin a = TALLY__V1__ADMIN__INIT;
	a.op = TALLY__V1__ADMIN__OP__TRANSFER;
	a.node_id = (uint64_t)next;
	a.address = (char *)"";
	Tally__V1__Response *res;
	int64_t deadline = now_ms() + HANG_MS;
	while (wait_leader(&c) != (uint64_t)next) {
		if (now_ms() > deadline)
			fail_msg("leadership never moved to node %d", next);
		(void)tally_client_admin(admin, &a, &c.arena, &res); /* retried until it moves */
	}
	wait_clock_off(&c, next, 3500);
	assert_time_bounded_and_capture(&c, dealer, mall, h2);
	tally_client_close(admin);
	tally_client_close(dealer);
	tally_client_close(mall);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* tallyctl is a contract: JSON shapes and exit codes. Returns its exit status, with
 * what it printed (stdout, then or among it stderr) in out; --json unless `human`. */
static int tallyctl_as(struct cluster *c, const char *cluster, bool human, const char *args,
		       char *out, size_t cap)
{
	char cmd[4096], ctl[1100];
	snprintf(ctl, sizeof(ctl), "%s", tallyd_path);
	char *slash = strrchr(ctl, '/');
	snprintf(slash + 1, sizeof(ctl) - (size_t)(slash + 1 - ctl), "tallyctl");
	char trust[400];
	if (c->insecure)
		snprintf(trust, sizeof(trust), "TALLY_INSECURE=1");
	else
		snprintf(trust, sizeof(trust), "TALLY_CA=%s", c->ca);
	snprintf(cmd, sizeof(cmd), "TALLY_CLUSTER=%s TALLY_KEY_DIR=%s/keys %s %s %s %s 2>&1",
		 cluster, c->dir, trust, ctl, human ? "" : "--json", args);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int tallyctl(struct cluster *c, const char *cluster, const char *args, char *out, size_t cap)
{
	return tallyctl_as(c, cluster, false, args, out, cap);
}

static void expect_in(const char *out, const char *what, const char *where)
{
	if (strstr(out, what) == NULL)
		fail_msg("%s lacks %s: %s", where, what, out);
}

/* The request id tallyctl made for a command sent without one: 32 hex digits in
 * UUIDv7's layout (version 7, the RFC's variant), the time in milliseconds first. */
static uint64_t fresh_request_id_ms(const char *out)
{
	const char *at = strstr(out, "\"request_id\":\"");
	if (at == NULL)
		fail_msg("no request id: %s", out);
	at += strlen("\"request_id\":\"");
	for (int i = 0; i < 32; i++)
		if (!isxdigit((unsigned char)at[i]) || isupper((unsigned char)at[i]))
			fail_msg("request id not 32 lower-case hex digits: %s", out);
	if (at[32] != '"' || at[12] != '7' || strchr("89ab", at[16]) == NULL)
		fail_msg("request id not in UUIDv7's layout: %s", out);
	char ms[13];
	memcpy(ms, at, 12);
	ms[12] = '\0';
	return strtoull(ms, NULL, 16);
}

/* Commands sent without a request id get ids that rise with time (README, Idempotency):
 * the ledger's claims of them land together. */
static void assert_tallyctl_request_ids_rise_with_time(struct cluster *c)
{
	char out[4096];
	int64_t before = wall_now_ms();
	assert_int_equal(tallyctl(c, c->clients, "member open --id rid-1", out, sizeof(out)), 0);
	uint64_t first = fresh_request_id_ms(out);
	assert_int_equal(tallyctl(c, c->clients, "member open --id rid-2", out, sizeof(out)), 0);
	uint64_t second = fresh_request_id_ms(out);
	assert_true(first >= (uint64_t)before && second >= first);
	assert_true(second <= (uint64_t)wall_now_ms());
}

/* People's units: a settlement cut off at an RFC 3339 time, amounts with their
 * currency and times in RFC 3339, raw numbers kept beside them in JSON. b1 (CNY,
 * 0.01 a point) and ivy with 50 points exist. */
static void assert_tallyctl_speaks_peoples_units(struct cluster *c)
{
	char out[8192], args[512], until[TALLY_TIME_BYTES], want[128];
	assert_int_equal(tallyctl(c, c->clients, "--key auditor balance --brand b1 --member ivy", out, sizeof(out)), 0);
	expect_in(out, "\"available\":50", "balance JSON");
	expect_in(out, "\"available_value\":\"0.50 CNY\"", "balance JSON");
	assert_int_equal(tallyctl_as(c, c->clients, true, "--key auditor balance --brand b1 --member ivy", out, sizeof(out)), 0);
	expect_in(out, "available 50 (0.50 CNY)", "balance");
	assert_int_equal(tallyctl(c, c->clients, "brand create --id b2 --currency CNY --request-id u1", out, sizeof(out)), 0);
	assert_int_equal(tallyctl(c, c->clients, "agreement set --from b1 --to b2 --rate 1/2 --price-micros 4000 --request-id u2", out, sizeof(out)), 0);
	assert_int_equal(tallyctl(c, c->clients, "--key partner-b2 exchange --from b1 --to b2 --member ivy --points 20 --request-id u3", out, sizeof(out)), 0);
	/* The cut-off: now, after the exchange's batch; the settle's batch comes later. */
	int64_t cut = wall_now_ms();
	while (wall_now_ms() <= cut) {
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL); /* the cut-off must be in the past: one millisecond passes */
	}
	tally_time_format(cut, until);
	snprintf(args, sizeof(args), "--key partner-b2 settle --brands b1,b2 --until %s --request-id u4", until);
	if (tallyctl(c, c->clients, args, out, sizeof(out)) != 0)
		fail_msg("settle --until %s: %s", until, out);
	assert_int_equal(tallyctl(c, c->clients, "--key auditor settlements --brands b1,b2", out, sizeof(out)), 0);
	snprintf(want, sizeof(want), "\"until_ms\":%lld,\"until\":\"%s\"", (long long)cut, until);
	expect_in(out, want, "settlements JSON");
	/* 20 b1 points at 1/2 are 10 b2 points at 4000 micros: b1 owes b2 0.04 CNY */
	expect_in(out, "\"net_micros\":40000,\"net\":\"0.04 CNY\",\"currency\":\"CNY\"", "settlements JSON");
	assert_int_equal(tallyctl_as(c, c->clients, true, "--key auditor settlements --brands b1,b2", out, sizeof(out)), 0);
	snprintf(want, sizeof(want), "until %s: 1 obligations, net 0.04 CNY b1 -> b2", until);
	expect_in(out, want, "settlements");
	assert_int_equal(tallyctl(c, c->clients, "--key auditor digest", out, sizeof(out)), 0);
	expect_in(out, "\"time\":\"20", "digest JSON");
	assert_int_equal(tallyctl_as(c, c->clients, true, "--key auditor entries --brand b2", out, sizeof(out)), 0);
	expect_in(out, "Z exchange", "entries");
	/* A time that is not one is a usage error, said plainly; nothing is sent. */
	assert_int_equal(tallyctl(c, c->clients, "--key partner-b2 settle --brands b1,b2 --until 2026-12-01T00:00:00", out, sizeof(out)), 2);
	expect_in(out, "expected Z or an offset", "a time without its zone");
	assert_int_equal(tallyctl(c, c->clients, "--key partner-b2 settle --brands b1,b2 --until yesterday", out, sizeof(out)), 2);
	expect_in(out, "RFC 3339", "a time that is no time");
}

/* Every running node's `tallyctl rules`, and its tally_ledger_rules metric, say `want`
 * (followers apply a little after the leader: waits for it, under the hang deadline). */
static void assert_rules_everywhere(struct cluster *c, unsigned want)
{
	char out[1024], at[32], expected[64];
	snprintf(expected, sizeof(expected), "\"rules\":%u,", want);
	int64_t deadline = now_ms() + HANG_MS;
	for (int i = 1; i <= c->n; i++) {
		client_addr(c, i, at, sizeof(at));
		while (tallyctl(c, at, "--key auditor rules", out, sizeof(out)) != 0 ||
		       strstr(out, expected) == NULL) {
			if (now_ms() > deadline)
				fail_msg("node %d: rules not %u after %d s: %s", i, want, HANG_MS / 1000, out);
			struct pollfd none;
			poll(&none, 0, 50);
		}
		assert_int_equal((int)metric(c, i, "tally_ledger_rules"), (int)want);
		assert_int_equal((int)metric(c, i, "tally_rules_max"), TALLY_RULES_CURRENT);
	}
}

/* How many set_rules entries the journal has (one page of entries is enough here). */
static int set_rules_entries(struct cluster *c)
{
	char out[65536];
	assert_int_equal(tallyctl(c, c->clients, "--key auditor entries --limit 1000", out, sizeof(out)), 0);
	int n = 0;
	for (const char *p = out; (p = strstr(p, "\"kind\":\"set_rules\"")) != NULL; p++)
		n++;
	return n;
}

/* The ledger's rules (ledger.h, "Rules") through real nodes: a new cluster's first
 * leader writes set_rules as entry 1. A ledger begun under the first rules stays under
 * them until an operator runs `tallyctl rules upgrade`, and then every replica switches
 * at the same entry. Who may switch, and to what, is checked. */
static void test_a_new_ledger_starts_under_the_newest_rules_and_an_older_one_switches_when_told(
	void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	assert_rules_everywhere(&c, TALLY_RULES_CURRENT);
	char out[8192];
	assert_int_equal(tallyctl(&c, c.clients, "--key auditor entry --seq 1", out, sizeof(out)), 0);
	expect_in(out, "\"kind\":\"set_rules\"", "entry 1");
	assert_int_equal(tallyctl(&c, c.clients, "rules upgrade", out, sizeof(out)), 1);
	expect_in(out, "\"error\":\"ALREADY_EXISTS\"", "rules upgrade to the rules in force");
	assert_int_equal(tallyctl(&c, c.clients, "rules upgrade --version 99", out, sizeof(out)), 1);
	expect_in(out, "\"error\":\"INVALID_ARGUMENT\"", "rules upgrade past the binary's");
	assert_int_equal(tallyctl(&c, c.clients, "--key mall rules upgrade", out, sizeof(out)), 1);
	expect_in(out, "\"error\":\"PERMISSION_DENIED\"", "rules upgrade by a mall key");
	assert_int_equal(set_rules_entries(&c), 1);

	/* Some history, then every ledger made one that an older tallyd left: format 4,
	 * so under the first rules (nothing was snapshotted yet: the ledgers are used as
	 * they are at the restart). */
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "erin"), CODE(OK));
	send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "erin", 10), CODE(OK));
	tally_client_close(admin);
	assert_replicas_equal(&c);
	for (int i = 1; i <= 3; i++)
		node_signal(&c, i, SIGTERM);
	const uint8_t format_4[8] = {0, 0, 0, 0, 0, 0, 0, 4};
	for (int i = 1; i <= 3; i++) {
		char dir[400];
		snprintf(dir, sizeof(dir), "%s/node%d/ledger", c.dir, i);
		meta_poke(dir, "version", format_4, sizeof(format_4));
		meta_poke(dir, "rules", NULL, 0);
	}
	for (int i = 1; i <= 3; i++)
		node_start(&c, i, false, false);
	wait_leader(&c);
	admin = client(&c, "admin");
	send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "erin", 10), CODE(OK));
	assert_rules_everywhere(&c, TALLY_RULES_FIRST); /* no switch on its own */
	assert_int_equal(tallyctl(&c, c.clients, "rules upgrade", out, sizeof(out)), 0);
	assert_rules_everywhere(&c, TALLY_RULES_CURRENT);
	send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "erin", 10), CODE(OK));
	tally_client_close(admin);
	assert_int_equal(set_rules_entries(&c), 2);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

static void test_tallyctl_json_shapes_and_exit_codes(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	char out[8192];
	if (tallyctl(&c, c.clients, "brand create --id b1 --currency CNY --request-id r1", out, sizeof(out)) != 0)
		fail_msg("brand create: %s", out);
	assert_int_equal(tallyctl(&c, c.clients, "member open --id ivy --request-id r2", out, sizeof(out)), 0);
	assert_int_equal(tallyctl(&c, c.clients, "--key dealer accrue --brand b1 --member ivy --points 70 --request-id r3", out, sizeof(out)), 0);
	assert_int_equal(tallyctl(&c, c.clients, "--key dealer accrue --brand b1 --member ivy --points 70 --request-id r3", out, sizeof(out)), 0);
	assert_non_null(strstr(out, "\"replay\":true"));
	assert_int_equal(tallyctl(&c, c.clients, "--key mall hold --brand b1 --member ivy --points 20", out, sizeof(out)), 0);
	assert_non_null(strstr(out, "\"hold_id\":"));
	assert_int_equal(tallyctl(&c, c.clients, "--key auditor balance --brand b1 --member ivy", out, sizeof(out)), 0);
	const char *fields[] = {"\"brand\":\"b1\"", "\"member\":\"ivy\"", "\"available\":50",
				"\"held\":20", "\"earned\":70", "\"redeemed\":0", "\"expired\":0", "\"tier\":"};
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (strstr(out, fields[i]) == NULL)
			fail_msg("balance JSON lacks %s: %s", fields[i], out);
	assert_int_equal(tallyctl(&c, c.clients, "--key mall redeem --brand b1 --member ivy --points 999", out, sizeof(out)), 1);
	assert_non_null(strstr(out, "\"error\":\"INSUFFICIENT_POINTS\""));
	assert_int_equal(tallyctl(&c, c.clients, "accrue --brand b1", out, sizeof(out)), 2);
	assert_int_equal(tallyctl(&c, c.clients, "--key auditor digest", out, sizeof(out)), 0);
	assert_non_null(strstr(out, "\"state_digest\":\""));
	assert_int_equal(tallyctl(&c, c.clients, "--key auditor status", out, sizeof(out)), 0);
	assert_non_null(strstr(out, "\"leader\":{\"id\":"));
	assert_tallyctl_speaks_peoples_units(&c);
	assert_tallyctl_request_ids_rise_with_time(&c);
	/* Cluster changes refused by the node are definite rejections, with the reason. */
	assert_int_equal(tallyctl(&c, c.clients, "cluster remove --id 9", out, sizeof(out)), 1);
	assert_non_null(strstr(out, "\"error\":\"NOT_FOUND\""));
	assert_int_equal(tallyctl(&c, c.clients, "--key mall cluster remove --id 2", out, sizeof(out)), 1);
	assert_non_null(strstr(out, "\"error\":\"PERMISSION_DENIED\""));
	/* Nobody listening: definitely not applied. */
	assert_int_equal(tallyctl(&c, "127.0.0.1:1", "--timeout-ms 300 --key auditor status", out, sizeof(out)), 3);
	/* Every node paused: no handshake completes, so nothing was sent: unavailable. */
	for (int i = 1; i <= 3; i++)
		node_signal(&c, i, SIGSTOP);
	assert_int_equal(tallyctl(&c, c.clients, "--timeout-ms 300 --key dealer accrue --brand b1 --member ivy --points 1", out, sizeof(out)), 3);
	for (int i = 1; i <= 3; i++)
		node_signal(&c, i, SIGCONT);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

static void test_a_request_sent_and_never_answered_is_an_unknown_outcome(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start(&c, 3);
	wait_leader(&c);
	brand_b1_and_member(&c, "jo");
	struct tally_client_options o = {.cluster = c.clients, .key_name = "dealer",
					 .secret = secret_of("dealer"), .timeout_ms = 500, .attempts = 1,
					 .ca_file = client_ca(&c)};
	struct tally_client *cl;
	char err[256];
	assert_int_equal(tally_client_open(&cl, &o, err, sizeof(err)), CODE(OK));
	for (int i = 1; i <= 3; i++)
		node_signal(&c, i, SIGSTOP);
	Tally__V1__CommandResult *r;
	assert_int_equal(tally_client_command(cl, accrue_cmd(&c, "maybe", "b1", "jo", 5), &c.arena, &r),
			 CODE(TIMEOUT));
	for (int i = 1; i <= 3; i++)
		node_signal(&c, i, SIGCONT);
	tally_client_close(cl);
	/* Retrying the same request id settles it: applied exactly once either way. The
	 * nodes, resumed together, may hold an election first, and a try in flight on a
	 * leader that loses it is an unknown outcome again: tried again with the same id. */
	struct tally_client *dealer = client(&c, "dealer");
	send_cmd_until(&c, dealer, accrue_cmd(&c, "maybe", "b1", "jo", 5), CODE(OK), true);
	send_cmd_until(&c, dealer, accrue_cmd(&c, "maybe", "b1", "jo", 5), CODE(OK), true);
	assert_int_equal(account_of(&c, dealer, "b1", "jo")->available, 5);
	tally_client_close(dealer);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* The node that leads, asked node by node (a follower's idea of the leader may lag). */
static int current_leader(struct cluster *c)
{
	int64_t deadline = now_ms() + HANG_MS;
	while (now_ms() < deadline) {
		for (int i = 1; i <= c->n; i++) {
			if (c->pid[i] == 0)
				continue;
			char addr[32];
			client_addr(c, i, addr, sizeof(addr));
			struct tally_client *cl = connect_to(c, addr, "auditor", secret_of("auditor"));
			bool leads = strcmp(status(c, cl)->state, "leader") == 0;
			tally_client_close(cl);
			if (leads)
				return i;
		}
		struct pollfd none;
		poll(&none, 0, 50); /* pace the polling of the condition */
	}
	fail_msg("no node leads within %d s; logs in %s", HANG_MS / 1000, c->dir);
	return 0;
}

/* Runs tallyctl against the leader alone while every other node is paused: the leader
 * takes the request but cannot commit it, and steps down after an election timeout
 * without a quorum. `args_fmt` may name one of the paused followers with %d (*follower).
 * Returns tallyctl's exit status (output in out); every node runs again afterwards.
 * When the leader stepped down before the request reached it, tallyctl exits 3 (not
 * applied) and the next leader is tried. */
static int tallyctl_with_a_lost_leader(struct cluster *c, const char *args_fmt, int *follower,
				       char *out, size_t cap)
{
	int64_t deadline = now_ms() + HANG_MS;
	for (;;) {
		int leader = current_leader(c);
		*follower = leader == 1 ? 2 : 1;
		char args[512], addr[32];
		snprintf(args, sizeof(args), args_fmt, *follower);
		client_addr(c, leader, addr, sizeof(addr));
		for (int i = 1; i <= c->n; i++)
			if (i != leader && c->pid[i] > 0)
				node_signal(c, i, SIGSTOP);
		int rc = tallyctl(c, addr, args, out, cap);
		for (int i = 1; i <= c->n; i++)
			if (i != leader && c->pid[i] > 0)
				node_signal(c, i, SIGCONT);
		if (rc != 3 || now_ms() > deadline)
			return rc;
	}
}

/* A command and a membership change the leader took and then lost with its leadership
 * are unknown (exit 4) — never "not applied" — and asking again settles them. */
static void test_a_change_or_command_in_flight_when_the_leader_is_lost_is_unknown(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.election_ms = "1000"}); /* time for tallyctl to reach it */
	wait_leader(&c);
	char out[8192];
	assert_int_equal(tallyctl(&c, c.clients, "brand create --id b1 --request-id r1", out, sizeof(out)), 0);
	assert_int_equal(tallyctl(&c, c.clients, "member open --id kim --request-id r2", out, sizeof(out)), 0);
	int follower = 0;
	int rc = tallyctl_with_a_lost_leader(&c, "--timeout-ms 10000 --key dealer accrue --brand b1 "
					     "--member kim --points 5 --request-id u-1", &follower,
					     out, sizeof(out));
	if (rc != 4 || strstr(out, "retry with the same --request-id u-1") == NULL)
		fail_msg("accrue with a lost leader: exit %d, expected 4:\n%s", rc, out);
	assert_int_equal(tallyctl(&c, c.clients, "--key dealer accrue --brand b1 --member kim "
				  "--points 5 --request-id u-1", out, sizeof(out)), 0);
	assert_int_equal(tallyctl(&c, c.clients, "--key auditor balance --brand b1 --member kim",
				  out, sizeof(out)), 0);
	assert_non_null(strstr(out, "\"available\":5,")); /* applied exactly once */
	/* The leader appends the change, then loses its leadership: the node answers TIMEOUT
	 * (it said NOT_LEADER once, which the client took as "not applied"). */
	rc = tallyctl_with_a_lost_leader(&c, "--timeout-ms 10000 cluster remove --id %d", &follower,
					 out, sizeof(out));
	if (rc != 4 || strstr(out, "outcome unknown") == NULL)
		fail_msg("remove with a lost leader: exit %d, expected 4:\n%s", rc, out);
	char again[64];
	snprintf(again, sizeof(again), "cluster remove --id %d", follower);
	int64_t deadline = now_ms() + HANG_MS;
	for (;;) { /* removed now, or found gone: the unknown try took effect */
		rc = tallyctl(&c, c.clients, again, out, sizeof(out));
		if (rc == 0 || (rc == 1 && strstr(out, "\"error\":\"NOT_FOUND\"") != NULL))
			break;
		if (now_ms() > deadline)
			fail_msg("%s still exits %d after %d s:\n%s", again, rc, HANG_MS / 1000, out);
		struct pollfd none;
		poll(&none, 0, 50); /* "a change is under way" until the earlier one commits */
	}
	node_signal(&c, follower, SIGTERM);
	char leader_addr[32];
	client_addr(&c, current_leader(&c), leader_addr, sizeof(leader_addr));
	struct tally_client *cl = connect_to(&c, leader_addr, "auditor", secret_of("auditor"));
	Tally__V1__Status *st = status(&c, cl);
	for (size_t i = 0; i < st->n_nodes; i++)
		assert_true(st->nodes[i]->id != (uint64_t)follower);
	tally_client_close(cl);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

/* Node i's ledger as after a reboot: its mark names another boot
 * (consensus/bootmark.c), so its next start checks it and restores raft's snapshot. */
static void mark_another_boot(const struct cluster *c, int i)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/node%d/ledger.boot", c->dir, i);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "00000000-0000-0000-0000-000000000000 0:0\n");
	assert_int_equal(fclose(f), 0);
}

/* An OS crash under MDB_NOSYNC can leave a damaged ledger file: the node must notice
 * at start and rebuild from the raft snapshot and log. */
/* With journal segments of 16 KiB, the snapshot the node restores at start names
 * closed segments: they come from its links, the ledger's own journal gone with it. */
static void test_a_node_with_a_damaged_ledger_rebuilds_it_at_start(void **state)
{
	(void)state;
	struct cluster c;
	cluster_start_with(&c, 3, &(struct cluster_opts){.journal_segment_kb = "16"});
	uint64_t leader = wait_leader(&c);
	int victim = leader == 1 ? 2 : 1;
	struct tally_client *admin = client(&c, "admin");
	send_cmd(&c, admin, brand_cmd(&c, "b1"), CODE(OK));
	send_cmd(&c, admin, member_cmd(&c, "max"), CODE(OK));
	for (int i = 0; i < 150; i++)
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "max", 2), CODE(OK));
	assert_replicas_equal(&c);
	node_signal(&c, victim, SIGTERM);
	/* Damage that a lost page write leaves: one account record changed behind the
	 * ledger's back (the digest no longer matches). */
	char path[400];
	snprintf(path, sizeof(path), "%s/node%d/ledger", c.dir, victim);
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_cursor *cur;
	MDB_val k, v;
	assert_int_equal(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 32);
	mdb_env_set_mapsize(env, 64ULL << 30);
	assert_int_equal(mdb_env_open(env, path, 0, 0644), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "accounts", 0, &dbi), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_FIRST), 0);
	static uint8_t bad[1 << 16];
	assert_true(v.mv_size < sizeof(bad));
	memcpy(bad, v.mv_data, v.mv_size);
	bad[v.mv_size - 1] ^= 0x01;
	MDB_val nv = {v.mv_size, bad};
	assert_int_equal(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), 0);
	mdb_cursor_close(cur);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	mark_another_boot(&c, victim); /* the crash was the OS's */
	node_start(&c, victim, false, false);
	for (int i = 0; i < 10; i++)
		send_cmd(&c, admin, accrue_cmd(&c, NULL, "b1", "max", 1), CODE(OK));
	tally_client_close(admin);
	assert_replicas_equal(&c);
	char log[400], text[1 << 14];
	snprintf(log, sizeof(log), "%s/node%d.log", c.dir, victim);
	FILE *f = fopen(log, "r");
	assert_non_null(f);
	text[fread(text, 1, sizeof(text) - 1, f)] = '\0';
	fclose(f);
	assert_non_null(strstr(text, "failed its start check"));
	uint8_t a[32], b[32];
	size_t links, na, nb;
	dir_files_hash(&c, victim, "snapshot-segments", a, &links);
	assert_true(links >= 1);
	dir_files_hash(&c, (int)leader, "ledger/journal", a, &na);
	dir_files_hash(&c, victim, "ledger/journal", b, &nb);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, 32);

	/* Without its links the node cannot restore its snapshot: it ends, naming the
	 * segment; given them back, it starts. */
	node_signal(&c, victim, SIGTERM);
	char links_dir[400], moved[420];
	snprintf(links_dir, sizeof(links_dir), "%s/node%d/snapshot-segments", c.dir, victim);
	snprintf(moved, sizeof(moved), "%s.moved", links_dir);
	assert_int_equal(rename(links_dir, moved), 0);
	mark_another_boot(&c, victim);
	node_start(&c, victim, false, false);
	int code = 0;
	for (int64_t deadline = now_ms() + HANG_MS; !node_exited(&c, victim, &code);) {
		if (now_ms() > deadline)
			fail_msg("node %d still runs without its snapshot links", victim);
		struct pollfd none;
		poll(&none, 0, 50);
	}
	assert_int_not_equal(code, 0);
	f = fopen(log, "r");
	assert_non_null(f);
	static char all[1 << 20];
	all[fread(all, 1, sizeof(all) - 1, f)] = '\0';
	fclose(f);
	assert_non_null(strstr(all, ".seg ("));
	assert_non_null(strstr(all, "is missing or of another length"));
	assert_int_equal(rename(moved, links_dir), 0);
	node_start(&c, victim, false, false);
	assert_replicas_equal(&c);
	cluster_stop(&c);
}

static int setup_paths(void)
{
	const char *env = getenv("TALLYD");
	if (env != NULL) {
		snprintf(tallyd_path, sizeof(tallyd_path), "%s", env);
		return 0;
	}
	char self[1024];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -1;
	self[n] = '\0';
	snprintf(tallyd_path, sizeof(tallyd_path), "%s/../tools/tallyd", dirname(self));
	return access(tallyd_path, X_OK);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (setup_paths() != 0) {
		fprintf(stderr, "test_cluster: no tallyd next to this test (build it first)\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_commands_and_rejections_end_to_end_through_the_cluster, teardown),
		cmocka_unit_test_teardown(test_partner_operator_and_timeout_commands_end_to_end, teardown),
		cmocka_unit_test_teardown(test_a_follower_redirects_and_a_linearizable_read_sees_the_write, teardown),
		cmocka_unit_test_teardown(test_wrong_key_secret_or_scope_is_refused, teardown),
		cmocka_unit_test_teardown(test_a_ping_is_answered_before_the_handshake_with_the_node_id_and_clock, teardown),
		cmocka_unit_test_teardown(test_malformed_and_oversized_frames_are_answered_and_the_cluster_keeps_serving, teardown),
		cmocka_unit_test_teardown(test_retries_across_a_leader_kill_apply_every_request_exactly_once, teardown),
		cmocka_unit_test_teardown(test_a_leader_whose_disk_sync_fails_exits_and_nothing_acknowledged_is_lost, teardown),
		cmocka_unit_test_teardown(test_a_node_whose_disk_fills_up_exits_cleanly_and_catches_up_once_space_is_freed, teardown),
		cmocka_unit_test_teardown(test_sigterm_and_restart_of_every_node_loses_nothing, teardown),
		cmocka_unit_test_teardown(test_a_stopped_node_catches_up_when_continued, teardown),
		cmocka_unit_test_teardown(test_sighup_reloads_keys_without_restart, teardown),
		cmocka_unit_test_teardown(test_followers_apply_large_entries_on_a_thread_through_moves_and_kills,
					  teardown),
		cmocka_unit_test_teardown(test_metrics_and_health_are_served_over_http, teardown),
		cmocka_unit_test_teardown(test_a_follower_back_from_an_outage_catches_up_from_the_log,
					  teardown),
		cmocka_unit_test_teardown(test_a_wiped_node_rejoins_and_catches_up_by_snapshot, teardown),
		cmocka_unit_test_teardown(test_a_node_that_kept_its_links_is_not_sent_the_segments_it_holds,
					  teardown),
		cmocka_unit_test_teardown(test_membership_add_promote_and_remove, teardown),
		cmocka_unit_test_teardown(test_a_leader_an_hour_ahead_by_step_or_at_election_releases_no_hold, teardown),
		cmocka_unit_test_teardown(test_tallyctl_json_shapes_and_exit_codes, teardown),
		cmocka_unit_test_teardown(test_a_new_ledger_starts_under_the_newest_rules_and_an_older_one_switches_when_told,
					  teardown),
		cmocka_unit_test_teardown(test_a_request_sent_and_never_answered_is_an_unknown_outcome, teardown),
		cmocka_unit_test_teardown(test_a_change_or_command_in_flight_when_the_leader_is_lost_is_unknown, teardown),
		cmocka_unit_test_teardown(test_a_node_with_a_damaged_ledger_rebuilds_it_at_start, teardown),
	};
	if (getenv("TALLY_TEST_FILTER") != NULL) /* e.g. "*sigterm*": run matching tests only */
		cmocka_set_test_filter(getenv("TALLY_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
