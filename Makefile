# nbdvault: one flat, non-recursive Makefile.
#
#   make                 build ./nbdvault (and build/libnbdcore.a)
#   make check           install missing packages, run every test
#   make check SANITIZE=1  the same, built with ASan + UBSan (in build-san/)
#   make fuzz            run the libFuzzer harnesses (clang)
#   make demo            the main job against a qemu-nbd export it starts
#   make reliability     the fault matrix (docs/RELIABILITY.md)
#   make bench / bench-vm  benchmarks (docs/BENCHMARKS.md; bench includes bench-s3, -encrypt, -scale)
#   make install PREFIX=/usr/local
#   V=1                  show the full command lines

CC       ?= cc
PREFIX   ?= /usr/local
PKGS     := gnutls libzstd sqlite3 libcurl json-c inih libisal libvirt libxml-2.0 libargon2
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# libvirt, libcurl and libxml2 are compiled against but loaded at run time
# (common/dynlib.h) by the commands that use them, when a VM or a bucket is
# first opened: not mapped by every start.
# Under ASan they stay linked: ASan resolves its XDR interceptors when the
# process starts, and libvirt's XDR library loaded later would call a null
# "real" function.
ifeq ($(SANITIZE),1)
PKGS_LINKED := $(PKGS)
else
PKGS_LINKED := $(filter-out libvirt libcurl libxml-2.0,$(PKGS))
endif
PKG_LIBS   := $(shell pkg-config --libs $(PKGS_LINKED) 2>/dev/null)

CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Wshadow -Wformat=2 \
            -fno-strict-aliasing -pthread
CPPFLAGS += -I. -D_GNU_SOURCE $(PKG_CFLAGS) -MMD -MP
LDLIBS   += $(PKG_LIBS) -pthread -lm

ifeq ($(SANITIZE),1)
# A sanitizer report exits with its own code, so that a test expecting a
# plain failure (exit 1) cannot mistake one for the other.
export ASAN_OPTIONS := exitcode=86:detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS := halt_on_error=1:exitcode=87:print_stacktrace=1
BUILD    := build-san
CFLAGS   += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
else
BUILD    := build
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

NBDCORE_SRCS := $(wildcard nbdcore/*.c)
CATALOG_SRCS := $(wildcard catalog/*.c)
AGENT_SRCS   := $(wildcard agent/*.c)
VM_SRCS      := $(wildcard vm/*.c)
STORE_SRCS   := $(wildcard store/*.c)
CRYPT_SRCS   := $(wildcard crypt/*.c)
COMMON_SRCS  := $(wildcard common/*.c)
CLI_SRCS     := $(wildcard cli/*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

NBDCORE_LIB := $(BUILD)/libnbdcore.a
APP_LIB     := $(BUILD)/libnbdvault.a
NBDVAULT    := $(BUILD)/nbdvault

UNIT_SRCS   := $(wildcard tests/unit/test_*.c)
UNIT_BINS   := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(UNIT_SRCS))
FUZZ_SRCS   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_REPLAY := $(patsubst tests/fuzz/%.c,$(BUILD)/tests/fuzz/%-replay,$(FUZZ_SRCS))
FUZZ_BINS   := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(FUZZ_SRCS))

.PHONY: all check unit-check fuzz-replay integration-check deps fuzz demo bench bench-vm reliability install clean
all: nbdvault

ifneq ($(SANITIZE),1)
nbdvault: $(NBDVAULT)
	$(Q)cp $< $@.tmp && mv -f $@.tmp $@
else
nbdvault: $(NBDVAULT)
endif

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(NBDCORE_LIB): $(call obj,$(NBDCORE_SRCS) $(COMMON_SRCS))
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(APP_LIB): $(call obj,$(AGENT_SRCS) $(STORE_SRCS) $(CRYPT_SRCS) $(VM_SRCS) $(CATALOG_SRCS) $(filter-out cli/main.c,$(CLI_SRCS)))
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(NBDVAULT): $(call obj,cli/main.c) $(APP_LIB) $(NBDCORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)

# Unit tests: cmocka, linked against every library of the tree.
$(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.o $(APP_LIB) $(NBDCORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# The integration tests' driver of the nbdcore client.
NBDCORE_TOOL := $(BUILD)/tests/nbdcore-tool
$(NBDCORE_TOOL): $(BUILD)/tests/tools/nbdcore-tool.o $(NBDCORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)

# A deliberately misbehaving NBD client for the tests of `nbdvault serve`
# (it shares no code with nbdcore).
HOSTILE_CLIENT := $(BUILD)/tests/hostile-client
$(HOSTILE_CLIENT): $(BUILD)/tests/tools/hostile-client.o
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^

# Fuzz harnesses: replayed over their corpus by a plain driver in `make
# check`; built with libFuzzer by `make fuzz`.
$(BUILD)/tests/fuzz/%-replay: $(BUILD)/tests/fuzz/%.o $(BUILD)/tests/fuzz/replay-main.o $(NBDCORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)

# The pack parser's harness needs the agent's pure pack code.
$(BUILD)/tests/fuzz/fuzz_pack-replay: $(BUILD)/tests/fuzz/fuzz_pack.o $(BUILD)/tests/fuzz/replay-main.o $(APP_LIB) $(NBDCORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/fuzz/fuzz_manifest-replay: $(BUILD)/tests/fuzz/fuzz_manifest.o $(BUILD)/tests/fuzz/replay-main.o $(APP_LIB) $(NBDCORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/fuzz/fuzz_keys-replay: $(BUILD)/tests/fuzz/fuzz_keys.o $(BUILD)/tests/fuzz/replay-main.o $(APP_LIB) $(NBDCORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/fuzz/replay-main.o: tests/fuzz/replay-main.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

FUZZ_FLAGS := -O1 -g -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer
build-fuzz/fuzz_pack: tests/fuzz/fuzz_pack.c agent/packfmt.c agent/chunk.c crypt/crypt.c $(COMMON_SRCS)
	@mkdir -p build-fuzz
	@echo "  FUZZ    $@"
	$(Q)clang $(filter-out -MMD -MP,$(CPPFLAGS)) $(FUZZ_FLAGS) -o $@ $^ $(PKG_LIBS) -pthread

build-fuzz/fuzz_manifest: tests/fuzz/fuzz_manifest.c agent/manifest.c $(COMMON_SRCS)
	@mkdir -p build-fuzz
	@echo "  FUZZ    $@"
	$(Q)clang $(filter-out -MMD -MP,$(CPPFLAGS)) $(FUZZ_FLAGS) -o $@ $^ $(PKG_LIBS) -pthread

build-fuzz/fuzz_keys: tests/fuzz/fuzz_keys.c $(CRYPT_SRCS) $(COMMON_SRCS)
	@mkdir -p build-fuzz
	@echo "  FUZZ    $@"
	$(Q)clang $(filter-out -MMD -MP,$(CPPFLAGS)) $(FUZZ_FLAGS) -o $@ $^ $(PKG_LIBS) -pthread

build-fuzz/%: tests/fuzz/%.c $(NBDCORE_SRCS) $(COMMON_SRCS)
	@mkdir -p build-fuzz
	@echo "  FUZZ    $@"
	$(Q)clang $(filter-out -MMD -MP,$(CPPFLAGS)) $(FUZZ_FLAGS) -o $@ $^ $(PKG_LIBS) -pthread

FUZZ_SECONDS ?= 60
fuzz: deps $(FUZZ_BINS)
	@set -e; for f in $(FUZZ_BINS); do \
	    n=$$(basename $$f); mkdir -p build-fuzz/corpus-$$n; \
	    echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	    $$f -max_total_time=$(FUZZ_SECONDS) build-fuzz/corpus-$$n tests/fuzz/corpus/$$n; \
	done

deps:
	@scripts/install-deps.sh --check || scripts/install-deps.sh

check: deps
	$(Q)$(MAKE) --no-print-directory all $(UNIT_BINS) $(FUZZ_REPLAY) $(NBDCORE_TOOL) $(HOSTILE_CLIENT)
	$(Q)$(MAKE) --no-print-directory unit-check fuzz-replay integration-check

unit-check: $(UNIT_BINS)
	@scripts/run-unit.sh $(UNIT_BINS)

fuzz-replay: $(FUZZ_REPLAY)
	@set -e; for f in $(FUZZ_REPLAY); do \
	    n=$$(basename $$f -replay); \
	    $$f tests/fuzz/corpus/$$n; \
	done

integration-check: nbdvault $(NBDCORE_TOOL) $(HOSTILE_CLIENT)
	@NBDVAULT=$(abspath $(NBDVAULT)) NBDCORE_TOOL=$(abspath $(NBDCORE_TOOL)) \
	    HOSTILE_CLIENT=$(abspath $(HOSTILE_CLIENT)) tests/integration/run.sh $(TESTS)

demo: deps nbdvault
	@NBDVAULT=$(abspath $(NBDVAULT)) scripts/demo.sh

bench: deps nbdvault
	@NBDVAULT=$(abspath $(NBDVAULT)) scripts/bench.sh
	@NBDVAULT=$(abspath $(NBDVAULT)) scripts/bench-s3.sh
	@NBDVAULT=$(abspath $(NBDVAULT)) scripts/bench-encrypt.sh
	@NBDVAULT=$(abspath $(NBDVAULT)) scripts/bench-scale.sh

reliability: deps nbdvault $(HOSTILE_CLIENT)
	@NBDVAULT=$(abspath $(NBDVAULT)) HOSTILE_CLIENT=$(abspath $(HOSTILE_CLIENT)) scripts/reliability.sh --out docs/RELIABILITY.md

bench-vm: deps nbdvault
	@NBDVAULT=$(abspath $(NBDVAULT)) scripts/bench-vm.sh

install: nbdvault
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 nbdvault $(DESTDIR)$(PREFIX)/bin/nbdvault

clean:
	rm -rf build build-san build-fuzz nbdvault

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
