# snapctl: see README.md.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO        ?= go
BIN       ?= bin/snapctl
FUZZTIME  ?= 3000x
E2E_FLAGS ?= -count=1 -timeout 60m

.PHONY: all build demo test lint unit cross check-units fuzz e2e bench man deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/snapctl

deps:
	./scripts/deps.sh

# A real-kernel session on a small built-in demo (boots user-mode Linux).
demo: deps build
	$(GO) test -c -tags e2e -o bin/e2e.test ./e2e/
	bin/e2e.test -test.run '^TestDemo$$' -demo

# The full suite: vet, unit tests, short fuzz runs, end-to-end on a real kernel.
test: lint unit cross check-units fuzz e2e

# Static checks: gofmt and goimports leave every file as it is; staticcheck
# (pinned in go.mod's tool block) finds nothing, with and without the e2e tag.
GOFILES = $(shell find . -name '*.go' -not -path './.git/*')
lint:
	@bad=$$(gofmt -l $(GOFILES); $(GO) tool goimports -l $(GOFILES)); \
	if [ -n "$$bad" ]; then echo "lint: not gofmt/goimports clean:"; echo "$$bad" | sort -u; exit 1; fi
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags e2e ./e2e/

# The crash hook (internal/crashhook) exists only in builds with the tag
# crashhook; the tests that kill a child process at its steps are in files
# with that tag, in HOOK_PKGS, named Test*Hook*, and run in a second,
# tagged pass (the first pass runs the release build's side).
HOOK_PKGS ?= ./internal/crashhook/ ./bow/

unit:
	$(GO) vet ./...
	$(GO) vet -tags crashhook ./...
	$(GO) vet -tags e2e ./e2e/
	CGO_ENABLED=0 $(GO) test -count=1 ./...
	CGO_ENABLED=0 $(GO) test -count=1 -tags crashhook -run 'Hook' $(HOOK_PKGS)

# Every architecture builds and vets; the pure packages build on darwin;
# ABI tests run on arm, 386, arm64, riscv64, ppc64le under qemu-user, and
# the pure unit tests on the 32-bit two (arm, 386).
cross:
	./scripts/cross.sh

# The systemd units and initramfs hooks: systemd-analyze verify, shell syntax.
check-units: build
	BIN=$(BIN) ./scripts/check-units.sh

# Regenerate docs/man from the command tree (a unit test fails when stale).
man:
	$(GO) run ./cmd/snapctl gen-docs --man docs/man

fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

# The e2e benchmarks: their results are times and ratios of times, so they
# run alone, one at a time, after the functional tests, which run two guests
# at a time (each calls parallel(t); e2e TestSchedule checks the split).
E2E_BENCH := ^(TestMergeBench|TestBowBench|TestBenchMerge|TestBenchPrepareExtents|TestBenchSkipFree)$$

# Both passes always run; the target fails if either does.
e2e: build
	{ s=0; \
	  $(GO) test -tags e2e $(E2E_FLAGS) -parallel 2 -skip '$(E2E_BENCH)' -v ./e2e/ 2>&1 || s=1; \
	  $(GO) test -tags e2e $(E2E_FLAGS) -parallel 1 -run '$(E2E_BENCH)' -v ./e2e/ 2>&1 || s=1; \
	  exit $$s; } | ./scripts/e2e-summary.sh

# Go benchmarks, then the real-kernel benchmarks (they also run, once each,
# in the e2e suite).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...
	$(GO) test -tags e2e -count=1 -parallel 1 -run '$(E2E_BENCH)' -v ./e2e/

clean:
	rm -rf bin
