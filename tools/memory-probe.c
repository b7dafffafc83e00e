/*
 * memory-probe — what the machine charges for memory the first time it is touched.
 *
 *   memory-probe [--mb N] [--rounds R]
 *
 * A growing ledger, a snapshot written to a new file, a page cache filling up: each
 * needs pages the kernel has not handed out for a while, and on a virtual machine
 * whose free memory goes back to the host (a balloon device's free page reporting)
 * every such page costs a trip to the host as well as the kernel's zeroing. This
 * measures it: each round maps N MiB (default 512) of anonymous memory and touches it
 * one byte per 4 KiB page (the first touch), then writes all of it (memory already
 * touched), and unmaps it; it prints both rates and the first touch's cost per page.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "tools/bench.h"

#define PROBE_PAGE_BYTES 4096

int main(int argc, char **argv)
{
	size_t mb = 512;
	int rounds = 3;
	static const struct option opts[] = {
		{"mb", required_argument, NULL, 'm'},
		{"rounds", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		if (c == 'm')
			mb = strtoul(optarg, NULL, 10);
		else if (c == 'r')
			rounds = atoi(optarg);
		else {
			fprintf(stderr, "usage: memory-probe [--mb N] [--rounds R]\n");
			return c == 'h' ? 0 : 2;
		}
	}
	if (mb == 0 || rounds <= 0) {
		fprintf(stderr, "memory-probe: --mb and --rounds must be positive\n");
		return 2;
	}
	size_t n = mb << 20;
	for (int r = 1; r <= rounds; r++) {
		volatile unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
						 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			perror("memory-probe: mmap");
			return 1;
		}
		double t0 = bench_now_s();
		for (size_t i = 0; i < n; i += PROBE_PAGE_BYTES)
			p[i] = 1;
		double t1 = bench_now_s();
		memset((void *)p, 2, n);
		double t2 = bench_now_s();
		printf("round %d: first touch %.0f MB/s (%.1f us per 4 KiB page), "
		       "touched again %.0f MB/s\n",
		       r, (double)n / 1e6 / (t1 - t0), (t1 - t0) * 1e6 / (double)(n / PROBE_PAGE_BYTES),
		       (double)n / 1e6 / (t2 - t1));
		munmap((void *)p, n);
	}
	return 0;
}
