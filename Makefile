# Tally — one Makefile for everything.
#
#   make                 build libraries, tools and tests
#   make check           run every test
#   make SANITIZE=1 check   the same under ASan + UBSan (separate build dir)
#   make valgrind        run the unit tests under valgrind (quick sizes)
#   make bench-ledger    apply 1,000,000 commands to the ledger and report commands/s
#   make demo            a realistic scenario through the library, journal and balances
#   make deps            install the Debian packages the build needs (apt-get)
#   make clean

CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=

ifeq ($(SANITIZE),1)
BUILD   ?= build/san
OPT     ?= -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SANLD   := -fsanitize=address,undefined
else
BUILD   ?= build/rel
OPT     ?= -O2 -g
SANLD   :=
endif

CFLAGS  += -std=c11 -D_DEFAULT_SOURCE -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
           -Wstrict-prototypes -Wmissing-prototypes -Wno-missing-field-initializers \
           $(OPT) -I. -I$(BUILD)
LDLIBS  := -llmdb -lprotobuf-c -lcrypto -lpthread

DEB_PACKAGES := build-essential pkg-config libraft-dev libuv1-dev liblmdb-dev lmdb-utils \
                libprotobuf-c-dev protobuf-c-compiler libcmocka-dev libssl-dev valgrind

PROTO_C := $(BUILD)/proto/tally.pb-c.c
PROTO_H := $(BUILD)/proto/tally.pb-c.h

LEDGER_SRC := $(wildcard ledger/*.c)
LEDGER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(LEDGER_SRC)) $(BUILD)/proto/tally.pb-c.o
LEDGER_LIB := $(BUILD)/libtally_ledger.a

TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_UTIL  := $(BUILD)/tests/util.o

TOOLS      := $(patsubst tools/%.c,$(BUILD)/tools/%,$(wildcard tools/*.c))

.PHONY: all check valgrind bench-ledger bench demo deps clean install
.SECONDARY:

all: $(LEDGER_LIB) $(TOOLS) $(TEST_BIN)

$(PROTO_C) $(PROTO_H): proto/tally.proto
	@mkdir -p $(BUILD)/proto
	protoc-c --c_out=$(BUILD)/proto -Iproto proto/tally.proto

$(BUILD)/proto/tally.pb-c.o: $(PROTO_C)
	$(CC) $(CFLAGS) -Wno-missing-prototypes -c $< -o $@

$(BUILD)/%.o: %.c $(PROTO_H) $(wildcard ledger/*.h) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LEDGER_LIB): $(LEDGER_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_UTIL) $(LEDGER_LIB)
	$(CC) $(SANLD) -o $@ $^ -lcmocka $(LDLIBS)

$(BUILD)/tools/%: $(BUILD)/tools/%.o $(LEDGER_LIB)
	$(CC) $(SANLD) -o $@ $^ $(LDLIBS)

check: $(TEST_BIN)
	@set -e; pass=0; fail=0; \
	for t in $(TEST_BIN); do \
		echo "== $$t"; \
		if $$t; then pass=$$((pass+1)); else fail=$$((fail+1)); echo "FAILED: $$t"; fi; \
	done; \
	echo "test programs: $$pass passed, $$fail failed"; \
	test $$fail -eq 0

valgrind: $(TEST_BIN)
	@set -e; for t in $(TEST_BIN); do \
		echo "== valgrind $$t"; \
		TALLY_TEST_QUICK=1 valgrind -q --error-exitcode=99 --leak-check=full \
			--errors-for-leak-kinds=definite $$t >/dev/null; \
	done; echo "valgrind: clean"

bench-ledger: $(BUILD)/tools/ledger-bench
	$(BUILD)/tools/ledger-bench --commands 1000000 --members 100000 --batch 1000 --writemap

bench: bench-ledger

demo: $(BUILD)/tools/ledger-demo
	$(BUILD)/tools/ledger-demo

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deps:
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PACKAGES)

install: $(LEDGER_LIB)
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/tally
	install -m 644 $(LEDGER_LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 ledger/ledger.h ledger/arena.h ledger/error.h ledger/merkle.h \
		$(DESTDIR)$(PREFIX)/include/tally/

clean:
	rm -rf build
