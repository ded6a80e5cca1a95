# tiproxy: `make` builds bin/tiproxy and bin/tiproxyctl; see README.md for the rest.
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0)
GIT_HASH ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
export TIPROXY_VERSION := $(VERSION)
export TIPROXY_GIT_HASH := $(GIT_HASH)
CARGO ?= cargo

.PHONY: all build test lint fmt demo deps clean bench

all: build

build:
	$(CARGO) build --release --bins
	mkdir -p bin
	cp target/release/tiproxy bin/tiproxy
	cp target/release/tiproxyctl bin/tiproxyctl

deps:
	scripts/install-deps.sh

test: deps
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

demo: deps build
	scripts/demo.sh

# Not run by CI: timings on a shared machine are for comparing ratios within one run.
bench: build
	bench/run.sh

clean:
	$(CARGO) clean
	rm -rf bin dist .demo
