# The README's commands. `make demo` and `make test` set up a fresh Debian
# machine (scripts/setup) before they do anything else.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/umlkit/umlkit/internal/cli.version=$(VERSION)

.PHONY: all setup build demo test bench fuzz shim clean

all: build

setup:
	./scripts/setup

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/umlkit ./cmd/umlkit

# The main job: the guide's two instances on one image, then the guide's
# scenario as a lab (a switch domain, a hub domain, a router): up, its
# tests, a status table, down (which runs even when something failed).
demo: setup build
	./bin/umlkit doctor
	./bin/umlkit demo
	./bin/umlkit lab up examples/seed; s=$$?; \
	if [ $$s -eq 0 ]; then ./bin/umlkit lab test examples/seed; s=$$?; ./bin/umlkit lab status examples/seed; fi; \
	./bin/umlkit lab down examples/seed; exit $$s

# Kernel tests must run here: a missing kernel fails them instead of
# skipping them. One package at a time (-p 1): several packages boot many
# kernels at once, and on a 2-core machine running them side by side
# starved boots (seen once: the guest's crypto self-test thread failed to
# start and the root mount failed with ENOMEM).
test: setup
	$(GO) vet ./...
	UMLKIT_REQUIRE_KERNEL=1 $(GO) test -race -count=1 -p 1 -timeout 25m ./...

bench: setup build
	./bench/run

# Short fuzzing of every parser (the seeds also run in `make test`).
fuzz:
	./scripts/fuzz

# Rebuild the xstate shim embedded in the binary (see internal/kernel/xstate/shim.c).
shim:
	gcc -O2 -shared -fPIC -Wall -Wextra -s -o internal/kernel/xstate/shim_amd64.so internal/kernel/xstate/shim.c

clean:
	rm -rf bin
