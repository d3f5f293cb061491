# The two commands of the README are `go run ./cmd/lamplighter` (the main
# job, on the demo PBX when no -config is given) and `make test` (every
# test, after installing the real peers the tests use). CI runs `make test`.
GO ?= go

.PHONY: test deps vet build package fuzz bench load storm ceiling compare cluster

# LAMPLIGHTER_E2E=require makes a missing test peer a failure, not a skip.
test: deps vet
	LAMPLIGHTER_E2E=require $(GO) test -race -count=1 -timeout 40m ./...
	$(MAKE) fuzz FUZZTIME=10s

# Runs each fuzz target for a while (longer by hand: make fuzz FUZZTIME=5m).
FUZZTIME ?= 10s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParsePIDF$$' -fuzztime $(FUZZTIME) ./presence/body/
	$(GO) test -run '^$$' -fuzz '^FuzzSubscribe$$' -fuzztime $(FUZZTIME) ./presence/
	$(GO) test -run '^$$' -fuzz '^FuzzDatagram$$' -fuzztime $(FUZZTIME) ./presence/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./presence/sipmsg/
	$(GO) test -run '^$$' -fuzz '^FuzzParseSubscription$$' -fuzztime $(FUZZTIME) ./presence/durable/

vet:
	$(GO) vet ./...

# Installs what the end-to-end tests use when it is missing (needs root).
deps:
	bash .ci/deps

# The version (packaging/VERSION) and commit are stamped into the binary:
# lamplighter -version, /metrics, the API and the switchboard show them.
VERSION := $(shell cat packaging/VERSION)
COMMIT := $(shell git rev-parse HEAD 2>/dev/null)
STAMP := -X github.com/lamplighter/lamplighter/cmd/lamplighter/version.stamped=$(VERSION) \
	-X github.com/lamplighter/lamplighter/cmd/lamplighter/version.stampedCommit=$(COMMIT)
build:
	$(GO) build -trimpath -ldflags "$(STAMP)" -o lamplighter ./cmd/lamplighter

# The .deb and .rpm for amd64 and arm64 in dist/ (packaging/build.sh;
# nfpm is a Go tool of packaging/go.mod): make package ARCHES=amd64.
ARCHES ?= amd64 arm64
package:
	bash packaging/build.sh -o dist $(ARCHES)

# Go benchmarks of the hot paths, with allocations (BENCHMARKS.md).
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=5 ./bridge/ ./presence/ ./presence/body/ ./presence/sipmsg/ ./presence/durable/ ./cmd/lamplighter/config/ ./calendar/

# The load tool against a freshly built Lamplighter, on loopback
# (BENCHMARKS.md): make load SUBS=100000 LOADFLAGS="-pprof /tmp/prof".
SUBS ?= 10000
load: build
	$(GO) build -trimpath -o lampload ./cmd/lampload
	./lampload -lamplighter ./lamplighter -subs $(SUBS) -json load-$(SUBS).json $(LOADFLAGS)

# A reboot storm (BENCHMARKS.md): every phone subscribes at once, offered
# at STORM a second whatever is answered; shed requests come back after
# their Retry-After, as phones do.
STORM ?= 40000
storm: build
	$(GO) build -trimpath -o lampload ./cmd/lampload
	./lampload -lamplighter ./lamplighter -subs 100000 -storm $(STORM) -quick -fanout 0 -burst=false -restart=false -json storm-$(STORM).json

# The load tool's ceiling (BENCHMARKS.md): the same set-up against a
# server that only answers, a process of its own with no state.
ceiling:
	$(GO) build -trimpath -o lampload ./cmd/lampload
	./lampload -ceiling -subs 100000

# Three Lamplighter nodes on one nats-server (from Debian, installed when
# missing): set-up over all nodes, the engine's cost, the failover of one
# node's share (BENCHMARKS.md): make cluster SUBS=100000.
cluster: build
	bash .ci/deps
	$(GO) build -trimpath -o lampload ./cmd/lampload
	./lampload -cluster 3 -lamplighter ./lamplighter -subs $(SUBS) -json cluster-$(SUBS).json

# Kamailio's presence server (from Debian, installed when missing) and
# Lamplighter under the same load in one run, with their ratio
# (BENCHMARKS.md): make compare SUBS=10000.
compare: build
	bash .ci/deps
	$(GO) build -trimpath -o lampload ./cmd/lampload
	./lampload -compare -lamplighter ./lamplighter -subs $(SUBS) -fanout $(SUBS) -json compare-$(SUBS).json
