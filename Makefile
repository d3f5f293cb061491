# The two commands of the README are `go run ./cmd/lamplighter` (the main
# job, on the demo PBX when no -config is given) and `make test` (every
# test, after installing the real peers the tests use). CI runs `make test`.
GO ?= go

.PHONY: test deps vet build fuzz

test: deps vet
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...

# Installs what the end-to-end tests use when it is missing (needs root).
deps:
	bash .ci/deps

build:
	$(GO) build -trimpath -o lamplighter ./cmd/lamplighter
