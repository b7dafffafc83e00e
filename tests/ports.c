/*
 * tests/ports — see ports.h.
 */
#include "tests/ports.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define PORTS_EPHEMERAL_DEFAULT 32768 /* Linux's default low end of the ephemeral range */

/* The low end of the kernel's ephemeral port range. */
static int ephemeral_low(void)
{
	int low = PORTS_EPHEMERAL_DEFAULT, high = 0;
	FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
	if (f != NULL) {
		if (fscanf(f, "%d %d", &low, &high) != 2)
			low = PORTS_EPHEMERAL_DEFAULT;
		fclose(f);
	}
	return low;
}

/* Whether 127.0.0.1:port can be bound as a listener binds it (libuv sets SO_REUSEADDR,
 * so a port whose old connections linger in TIME_WAIT is free; one with a listener is
 * not). *err receives errno when it cannot. */
static bool port_binds(int port, int *err)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = errno;
		return false;
	}
	int one = 1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	bool ok = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
		  bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 1) == 0;
	*err = ok ? 0 : errno;
	close(fd);
	return ok;
}

/* Opens (creating) the lock file of the block at `base` in the user's lock directory. */
static int block_lock_open(int base)
{
	char dir[128], path[160];
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/tally-test-ports-%u", tmp != NULL ? tmp : "/tmp",
		 (unsigned)getuid());
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -1;
	snprintf(path, sizeof(path), "%s/%d.lock", dir, base);
	return open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
}

void ports_acquire(struct ports_block *b, const int *offsets, size_t n_offsets)
{
	assert_non_null(b);
	assert_true(offsets != NULL && n_offsets > 0);
	b->base = 0;
	b->lock_fd = -1;
	int blocks = (ephemeral_low() - PORTS_FIRST) / PORTS_BLOCK_SIZE;
	if (blocks <= 0)
		fail_msg("ports: the ephemeral range starts below %d: no room for test ports",
			 PORTS_FIRST + PORTS_BLOCK_SIZE);
	int first = (int)((unsigned)getpid() % (unsigned)blocks), busy_port = 0, busy_err = 0;
	int locked = 0;
	for (int k = 0; k < blocks; k++) {
		int base = PORTS_FIRST + ((first + k) % blocks) * PORTS_BLOCK_SIZE;
		int fd = block_lock_open(base);
		if (fd < 0)
			fail_msg("ports: lock file for block %d: %s", base, strerror(errno));
		if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
			close(fd); /* another test process holds this block */
			locked++;
			continue;
		}
		bool free_all = true;
		for (size_t i = 0; i < n_offsets && free_all; i++) {
			assert_true(offsets[i] >= 0 && offsets[i] < PORTS_BLOCK_SIZE);
			if (!port_binds(base + offsets[i], &busy_err)) {
				free_all = false;
				busy_port = base + offsets[i];
			}
		}
		if (free_all) {
			b->base = base;
			b->lock_fd = fd;
			return;
		}
		close(fd);
	}
	fail_msg("ports: no free block of %d ports below %d (%d held by other test processes; "
		 "last busy port %d: %s)", PORTS_BLOCK_SIZE, ephemeral_low(), locked, busy_port,
		 strerror(busy_err));
}

void ports_release(struct ports_block *b)
{
	assert_non_null(b);
	if (b->lock_fd >= 0)
		close(b->lock_fd); /* drops the flock */
	b->lock_fd = -1;
	b->base = 0;
}
