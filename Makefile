# The two commands of the README are `go run ./cmd/lamplighter` (the main
# job, on the demo PBX when no -config is given) and `make test` (every
# test, after installing the real peers the tests use). CI runs `make test`.
GO ?= go

.PHONY: test deps vet build fuzz

# LAMPLIGHTER_E2E=require makes a missing test peer a failure, not a skip.
test: deps vet
	LAMPLIGHTER_E2E=require $(GO) test -race -count=1 ./...
	$(MAKE) fuzz FUZZTIME=10s

# Runs each fuzz target for a while (longer by hand: make fuzz FUZZTIME=5m).
FUZZTIME ?= 10s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParsePIDF$$' -fuzztime $(FUZZTIME) ./presence/body/
	$(GO) test -run '^$$' -fuzz '^FuzzSubscribe$$' -fuzztime $(FUZZTIME) ./presence/

vet:
	$(GO) vet ./...

# Installs what the end-to-end tests use when it is missing (needs root).
deps:
	bash .ci/deps

build:
	$(GO) build -trimpath -o lamplighter ./cmd/lamplighter
