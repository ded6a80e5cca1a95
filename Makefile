# tiproxy: `make` builds bin/tiproxy and bin/tiproxyctl; see README.md for the rest.
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0)
GIT_HASH ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
export TIPROXY_VERSION := $(VERSION)
export TIPROXY_GIT_HASH := $(GIT_HASH)
CARGO ?= cargo

.PHONY: all build test lint fmt demo deps clean package publish publish-nightly fuzz bench bench-instructions bench-idle

all: build

# Each target installs what it needs first (scripts/install-deps.sh is a quick no-op when all
# is present), so `make`, `make demo` and `make test` work on a fresh machine.
build:
	scripts/install-deps.sh build
	$(CARGO) build --release --bins
	mkdir -p bin
	cp target/release/tiproxy bin/tiproxy
	cp target/release/tiproxyctl bin/tiproxyctl

deps:
	scripts/install-deps.sh

test: deps
	$(CARGO) test --all-targets --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Bounded fuzzing of every parser that sees outside bytes: FUZZ_SECONDS per target (default 30),
# new inputs kept in FUZZ_CORPUS (default fuzz/corpus). Uses nightly when installed, else stable
# with RUSTC_BOOTSTRAP=1; installs cargo-fuzz when missing. .ci/run runs it for 15 s a target.
fuzz:
	fuzz/run.sh

demo:
	scripts/install-deps.sh runtime
	$(MAKE) build
	scripts/demo.sh

# Not run by CI: timings on a shared machine are for comparing ratios within one run.
bench: build
	bench/run.sh

# The proxy's and HAProxy's user-space instructions per query under callgrind: repeatable on a busy machine.
bench-instructions: build
	bench/instructions.sh

# Idle-session memory only (RSS growth per held session), the proxy and HAProxy side by side.
bench-idle: build
	ulimit -n "$$(ulimit -Hn)" && bench/idle.py

# TiUP packaging (packaging/README.md): the glibc 2.17 tarball and publishing it to a mirror.
# MIRROR and KEY are passed on when set; the default is a local mirror in dist/tiup-mirror.
PUBLISH_FLAGS = $(if $(MIRROR),--mirror $(MIRROR)) $(if $(KEY),--key $(KEY))

package:
	VERSION=$(VERSION) packaging/build.sh

publish:
	VERSION=$(VERSION) packaging/publish.sh --release $(PUBLISH_FLAGS)

publish-nightly:
	VERSION=$(VERSION) packaging/publish.sh --nightly $(PUBLISH_FLAGS)

clean:
	$(CARGO) clean
	rm -rf bin dist .demo fuzz/target fuzz/corpus fuzz/artifacts bench/.work
