# fwdd: see README.md. Kernel tests and the demo need root.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN     := bin/fwdd

.PHONY: all build test unit lint fuzz demo bench install clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/fwdd

# Everything CI runs: lint, then unit and kernel tests (kernel tests build
# their own network namespaces and need root), then a short fuzzing run.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz

# Fuzz the config parser and the compile step, FUZZTIME each; minimizing a
# new input is capped so it cannot eat the whole budget (new crashers
# land in the package's testdata/fuzz/, which also holds the corpus).
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./pkg/config/
	$(GO) test -run '^$$' -fuzz '^FuzzCompile$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./pkg/nft/

# Fast tests that need no root.
unit:
	$(GO) test -race -count=1 -short -skip 'TestKernel' ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

demo: build
	$(GO) run ./cmd/fwdd-demo --fwdd $(BIN)

bench: build
	./bench/run.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/fwdd
	install -D -m 0644 deploy/systemd/fwdd.service $(DESTDIR)/etc/systemd/system/fwdd.service
	install -d -m 0755 $(DESTDIR)/etc/fwdd
	[ -e $(DESTDIR)/etc/fwdd/fwdd.toml ] || install -m 0644 deploy/fwdd.toml $(DESTDIR)/etc/fwdd/fwdd.toml
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/fwdd/README.md
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now fwdd"

clean:
	rm -rf bin
