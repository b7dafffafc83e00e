# Tally — one Makefile for everything.
#
#   make                 build libraries, tools and tests
#   make check           run every test
#   make SANITIZE=1 check   the same under ASan + UBSan (separate build dir)
#   make valgrind        run the unit tests under valgrind (quick sizes)
#   make sim SEEDS=N     the deterministic cluster simulator over N seeds (tests/sim.c)
#   make bench-ledger    apply 1,000,000 commands to the ledger and report commands/s
#   make bench-snapshot  take and restore a raft snapshot of a 1,000,000-member ledger
#   make bench           tally-bench on a local 3-node cluster, over TLS and plaintext
#   make demo            a 3-node cluster on loopback and the Tally story told through it
#   make demo-ledger     the same story through the ledger library alone
#   make fuzz FUZZ_S=N   each libFuzzer target for N seconds (clang; tests/fuzz/)
#   make jepsen-smoke    three short fault-injection runs (root: network namespaces)
#   make jepsen          every nemesis x every workload, 60 s each, with a summary
#   make deps            install the Debian packages the build needs (apt-get)
#   make clean

CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=

ifeq ($(SANITIZE),1)
BUILD   ?= build/san
OPT     ?= -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SANLD   := -fsanitize=address,undefined
# Tests that run tallyd under an LD_PRELOAD (fiu-run) put the ASan runtime first.
OPT     += -DTALLY_ASAN_LIB='"$(shell $(CC) -print-file-name=libasan.so)"'
else
BUILD   ?= build/rel
OPT     ?= -O2 -g
SANLD   :=
endif

CFLAGS  += -std=c11 -D_DEFAULT_SOURCE -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
           -Wstrict-prototypes -Wmissing-prototypes -Wno-missing-field-initializers \
           $(OPT) -I. -I$(BUILD)
LDLIBS  := -lraft -luv -llmdb -lprotobuf-c -lssl -lcrypto -lpthread

DEB_PACKAGES := build-essential pkg-config libraft-dev libuv1-dev liblmdb-dev lmdb-utils \
                libprotobuf-c-dev protobuf-c-compiler libcmocka-dev libssl-dev valgrind \
                python3 iproute2 nftables iptables libfaketime fiu-utils gnuplot-nox \
                clang libclang-rt-dev openssl

PROTO_C := $(BUILD)/proto/tally.pb-c.c
PROTO_H := $(BUILD)/proto/tally.pb-c.h

LEDGER_SRC := $(wildcard ledger/*.c)
LEDGER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(LEDGER_SRC)) $(BUILD)/proto/tally.pb-c.o
# Everything a node and the tests link: ledger, consensus, rpc.
NODE_SRC   := $(LEDGER_SRC) $(wildcard consensus/*.c) $(wildcard rpc/*.c)
NODE_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(NODE_SRC)) $(BUILD)/proto/tally.pb-c.o
LEDGER_LIB := $(BUILD)/libtally_node.a
# libtally: the client library (static and shared) and its pkg-config file.
CLIENT_SRC := rpc/client.c rpc/connect.c rpc/frame.c rpc/keys.c rpc/tls.c ledger/arena.c ledger/error.c
CLIENT_PIC := $(patsubst %.c,$(BUILD)/pic/%.o,$(CLIENT_SRC)) $(BUILD)/pic/proto/tally.pb-c.o
CLIENT_A   := $(BUILD)/libtally.a
CLIENT_SO  := $(BUILD)/libtally.so

TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_UTIL  := $(BUILD)/tests/util.o $(BUILD)/tests/ports.o
# The deterministic cluster simulator (tests/sim.c, make sim): not a cmocka suite.
SIM_BIN    := $(BUILD)/tests/sim

TOOLS      := $(patsubst tools/%.c,$(BUILD)/tools/%,$(wildcard tools/*.c))
# tally-audit is several files (tools/audit/).
AUDIT_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/audit/*.c))
AUDIT_BIN  := $(BUILD)/tools/tally-audit
# The lost-writes nemesis's LD_PRELOAD recorder (always built without sanitizers:
# it is preloaded into release tallyd processes only).
LOSTWRITES := build/rel/jepsen/liblostwrites.so

.PHONY: all check valgrind sim bench-ledger bench-snapshot bench demo demo-ledger deps clean install \
        jepsen jepsen-smoke fuzz fuzz-build
.SECONDARY:

ifneq ($(wildcard rpc/client.c),)
CLIENT_LIBS := $(CLIENT_A) $(CLIENT_SO)
endif

all: $(LEDGER_LIB) $(CLIENT_LIBS) $(TOOLS) $(AUDIT_BIN) $(TEST_BIN) $(SIM_BIN) $(LOSTWRITES)

# One protoc-c run makes both files (&: groups them): under make -j two runs would
# rewrite the .c while it is being compiled.
$(PROTO_C) $(PROTO_H) &: proto/tally.proto
	@mkdir -p $(BUILD)/proto
	protoc-c --c_out=$(BUILD)/proto -Iproto proto/tally.proto

$(BUILD)/proto/tally.pb-c.o: $(PROTO_C)
	$(CC) $(CFLAGS) -Wno-missing-prototypes -c $< -o $@

HEADERS := $(PROTO_H) $(wildcard ledger/*.h) $(wildcard consensus/*.h) $(wildcard rpc/*.h) \
           $(wildcard tests/*.h) $(wildcard tools/audit/*.h)

$(BUILD)/pic/proto/tally.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -Wno-missing-prototypes -c $< -o $@

$(BUILD)/pic/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -c $< -o $@

$(BUILD)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LEDGER_LIB): $(NODE_OBJ)
	$(AR) rcs $@ $^

$(CLIENT_A): $(CLIENT_PIC)
	$(AR) rcs $@ $^

$(CLIENT_SO): $(CLIENT_PIC)
	$(CC) $(SANLD) -shared -Wl,-soname,libtally.so.0 -o $@ $^ -lprotobuf-c -lssl -lcrypto

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_UTIL) $(LEDGER_LIB)
	$(CC) $(SANLD) -o $@ $^ -lcmocka $(LDLIBS)

$(BUILD)/tools/%: $(BUILD)/tools/%.o $(LEDGER_LIB)
	$(CC) $(SANLD) -o $@ $^ $(LDLIBS)

$(AUDIT_BIN): $(AUDIT_OBJ) $(LEDGER_LIB)
	$(CC) $(SANLD) -o $@ $^ $(LDLIBS)

$(LOSTWRITES): jepsen/lostwrites.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
		-Wmissing-prototypes -O2 -fPIC -shared -o $@ $< -ldl -lpthread

# The simulator in make check: SIM_CHECK_SEEDS seeds (1 up), and a few run twice to
# prove a run is exact.
SIM_CHECK_SEEDS ?= 300
SIM_RUNS := "--seeds $(SIM_CHECK_SEEDS)" "--seeds 100 --nodes 5" "--first 900001 --seeds 10 --twice"

check: $(TEST_BIN) $(TOOLS) $(AUDIT_BIN) $(SIM_BIN)
	@set -e; pass=0; fail=0; \
	for py in jepsen/test_check.py jepsen/test_lostwrites.py jepsen/test_run.py tests/test_hostile.py tests/test_audit.py; do \
		echo "== $$py"; \
		if TALLY_BUILD=$(abspath $(BUILD)) python3 $$py; then pass=$$((pass+1)); else fail=$$((fail+1)); echo "FAILED: $$py"; fi; \
	done; \
	for t in $(TEST_BIN); do \
		echo "== $$t"; \
		if $$t; then pass=$$((pass+1)); else fail=$$((fail+1)); echo "FAILED: $$t"; fi; \
	done; \
	for args in $(SIM_RUNS); do \
		echo "== $(SIM_BIN) $$args"; \
		if $(SIM_BIN) $$args; then pass=$$((pass+1)); else fail=$$((fail+1)); echo "FAILED: sim $$args"; fi; \
	done; \
	echo "test programs: $$pass passed, $$fail failed"; \
	test $$fail -eq 0

# A test's forked children (test_failstop) are not reported on (they _exit with the
# node's status, leaving memory behind), but an error of theirs still makes their exit
# status 99, which the test checks.
VALGRIND := valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	--child-silent-after-fork=yes
valgrind: $(TEST_BIN) $(SIM_BIN)
	@set -e; for t in $(filter-out %/test_cluster,$(TEST_BIN)); do \
		echo "== valgrind $$t"; \
		TALLY_TEST_QUICK=1 $(VALGRIND) $$t >/dev/null; \
	done; \
	echo "== valgrind $(SIM_BIN) --seeds 5"; $(VALGRIND) $(SIM_BIN) --seeds 5 >/dev/null; \
	echo "valgrind: clean"

# The deterministic cluster simulator: SEEDS seeds from FIRST (make sim SEEDS=5000).
SEEDS ?= 1000
FIRST ?= 1
sim: $(SIM_BIN)
	$(SIM_BIN) --seeds $(SEEDS) --first $(FIRST)

bench-ledger: $(BUILD)/tools/ledger-bench
	$(BUILD)/tools/ledger-bench --commands 1000000 --members 100000 --batch 1000 --writemap

# A 1,000,000-member ledger built by ledger-bench (about a minute), then three runs of
# snapshot take and restore with their peak memory; the directory is removed after.
bench-snapshot: $(BUILD)/tools/ledger-bench $(BUILD)/tools/snapshot-bench
	@set -e; d=$$(mktemp -d /tmp/tally-bench-snapshot-XXXXXX); trap 'rm -rf "$$d"' EXIT; \
	mkdir "$$d/ledger"; \
	$(BUILD)/tools/ledger-bench --commands 1000000 --members 1000000 --batch 1000 \
		--writemap --dir "$$d/ledger" | tail -1; \
	$(BUILD)/tools/snapshot-bench --dir "$$d" --runs 3

# A local 3-node cluster, tally-bench against it, then stop it: over TLS (the default)
# and then plaintext (--insecure), side by side. BENCH_MODES=tls for one of them.
BENCH_MODES ?= tls insecure
bench: $(BUILD)/tools/tallyd $(BUILD)/tools/tallyctl $(BUILD)/tools/tally-bench $(BUILD)/tools/tally-certs
	@set -e; for mode in $(BENCH_MODES); do \
	d=$$(mktemp -d /tmp/tally-bench-XXXXXX); flag=; [ $$mode = insecure ] && flag=--insecure; \
	echo "== make bench: $$mode"; \
	TALLY_BUILD=$(abspath $(BUILD)) tools/tally-cluster start --dir $$d --base-port auto $$flag; \
	trap 'TALLY_BUILD=$(abspath $(BUILD)) tools/tally-cluster stop --dir '$$d'; rm -rf '$$d'' EXIT; \
	( set -a; . $$d/env; set +a; \
	$(BUILD)/tools/tally-bench --connections 4 --pipeline 64 --duration-s 10; \
	$(BUILD)/tools/tally-bench --connections 4 --pipeline 8 --batch 100 --duration-s 10; \
	$(BUILD)/tools/tally-bench --connections 4 --pipeline 32 --rate 20000 --duration-s 10 ); \
	TALLY_BUILD=$(abspath $(BUILD)) tools/tally-cluster stop --dir $$d; rm -rf $$d; trap - EXIT; \
	done

demo: $(BUILD)/tools/tallyd $(BUILD)/tools/tallyctl $(BUILD)/tools/tally-certs $(AUDIT_BIN)
	TALLY_BUILD=$(abspath $(BUILD)) tools/demo-cluster

# Fuzzing with libFuzzer (tests/fuzz/README.md): the node's code built by clang into
# build/fuzz with ASan and UBSan, one binary per target. `make fuzz FUZZ_S=N` runs each
# for N seconds from its seed corpus (tests/fuzz/corpus/T, kept in the repository)
# plus what earlier runs found (build/fuzz/corpus/T), and prints its executions.
FUZZ_TARGETS := frame request apply tls
FUZZ_S ?= 10
FUZZ_OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
            -fno-sanitize-recover=all
fuzz:
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=clang OPT="$(FUZZ_OPT)" fuzz-build
	@$(MAKE) --no-print-directory build/rel/tools/tally-certs
	@rm -rf build/fuzz/certs; build/rel/tools/tally-certs init --dir build/fuzz/certs --nodes 1 >/dev/null
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p build/fuzz/corpus/$$t; \
		echo "== fuzz_$$t $(FUZZ_S) s"; \
		TALLY_FUZZ_CERTS=build/fuzz/certs build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_S) \
			-print_final_stats=1 -max_len=4096 build/fuzz/corpus/$$t tests/fuzz/corpus/$$t \
			2>build/fuzz/fuzz_$$t.log || { tail -40 build/fuzz/fuzz_$$t.log; exit 1; }; \
		grep -E '^stat::number_of_executed_units|^stat::peak_rss' build/fuzz/fuzz_$$t.log; \
	done

fuzz-build: $(patsubst %,$(BUILD)/fuzz_%,$(FUZZ_TARGETS))

$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(LEDGER_LIB) $(HEADERS)
	$(CC) $(CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(LEDGER_LIB) $(LDLIBS)

# Fault injection (jepsen/README.md). One combination:
#   jepsen/run --workload bank --nemesis partition --time-limit 60 --rate 20 --concurrency 5 --seed 1
jepsen-smoke: $(TOOLS) $(LOSTWRITES)
	jepsen/run --workload bank --nemesis partition --time-limit 40 --quiet-s 5
	jepsen/run --workload set --nemesis kill --time-limit 40 --quiet-s 5
	jepsen/run --workload holds --nemesis clock --time-limit 40 --quiet-s 5

jepsen: $(TOOLS) $(LOSTWRITES)
	jepsen/matrix --time-limit 60

demo-ledger: $(BUILD)/tools/ledger-demo
	$(BUILD)/tools/ledger-demo

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deps:
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PACKAGES)

install: $(LEDGER_LIB) $(CLIENT_A) $(CLIENT_SO)
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/tally/ledger \
		$(DESTDIR)$(PREFIX)/include/tally/rpc $(DESTDIR)$(PREFIX)/include/tally/proto
	install -m 644 $(CLIENT_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(CLIENT_SO) $(DESTDIR)$(PREFIX)/lib/libtally.so.0
	ln -sf libtally.so.0 $(DESTDIR)$(PREFIX)/lib/libtally.so
	install -m 644 rpc/tally.h $(DESTDIR)$(PREFIX)/include/tally/rpc/
	install -m 644 ledger/arena.h ledger/error.h $(DESTDIR)$(PREFIX)/include/tally/ledger/
	install -m 644 $(PROTO_H) $(DESTDIR)$(PREFIX)/include/tally/proto/
	sed -e 's|@PREFIX@|$(PREFIX)|' rpc/libtally.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/libtally.pc

clean:
	rm -rf build
