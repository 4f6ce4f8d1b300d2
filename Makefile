# l7gate — see README.md for what each target does.
GO        ?= go
BIN       := bin/l7gate
GOTESTFLAGS ?= -timeout 25m
PKGS      := ./...

.PHONY: all build generate test bench lint demo deps clean

all: build

deps:
	@bash hack/install-deps.sh

build:
	$(GO) build -o $(BIN) ./cmd/l7gate

# Regenerates committed generated code (bpf2go objects, protobuf Go).
generate: deps
	$(GO) generate ./...

# Unit, golden, fuzz-seed and (as root) TestPrivileged… tests.
test: deps
	$(GO) vet ./...
	$(GO) test $(GOTESTFLAGS) $(PKGS)

# Benchmarks print numbers; they never assert on timing.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m $(PKGS)

lint:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

demo: build
	@echo "make demo: not yet — the starwars demo lands with the agent (issue 5)."
	@echo "Meanwhile try: $(BIN) policy trace -f examples/starwars --src-labels org=empire,class=tiefighter --dst-labels org=empire,class=deathstar --dport 80 --http-method POST --http-path /v1/request-landing"

clean:
	rm -rf bin
