# fwdd: see README.md. Kernel tests and the demo need root.
GO      ?= go
PREFIX  ?= /usr/local
DEBDIR  ?= .
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN     := bin/fwdd

.PHONY: all build test unit lint fuzz demo bench install deb man clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/fwdd

# Everything CI runs: lint, then unit and kernel tests (kernel tests build
# their own network namespaces and need root), then a short fuzzing run.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz

# Fuzz the config parser and the compile step for a number of executions
# each (about 20 s apiece on this kind of machine); minimizing a new input is
# capped so it cannot eat the whole budget (new crashers land in the
# package's testdata/fuzz/, which also holds the corpus). A count, not a
# duration: Go 1.26's fuzz coordinator can fail a duration-bound run with
# "context deadline exceeded" when its deadline fires while a starved worker
# is mid-call (golang/go#75804, fixed in Go 1.27); a count has no deadline.
FUZZPARSE ?= 40000x
FUZZCOMPILE ?= 8000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZPARSE) -fuzzminimizetime 2s ./pkg/config/
	$(GO) test -run '^$$' -fuzz '^FuzzCompile$$' -fuzztime $(FUZZCOMPILE) -fuzzminimizetime 2s ./pkg/nft/

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

# For systems without dpkg: the same files as the package, under PREFIX
# (binary, man pages, completion) and /etc (unit, user, config).
install: build man
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/fwdd
	install -d -m 0755 $(DESTDIR)/etc/systemd/system
	sed 's|/usr/sbin/fwdd|$(PREFIX)/sbin/fwdd|g' deploy/systemd/fwdd.service >$(DESTDIR)/etc/systemd/system/fwdd.service
	install -D -m 0644 packaging/deb/sysusers.conf $(DESTDIR)/etc/sysusers.d/fwdd.conf
	install -D -m 0644 bin/man/fwdd.8 $(DESTDIR)$(PREFIX)/share/man/man8/fwdd.8
	install -D -m 0644 bin/man/fwdd.toml.5 $(DESTDIR)$(PREFIX)/share/man/man5/fwdd.toml.5
	install -D -m 0644 deploy/bash-completion/fwdd $(DESTDIR)$(PREFIX)/share/bash-completion/completions/fwdd
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/fwdd/README.md
	install -D -m 0644 deploy/fwdd.toml $(DESTDIR)$(PREFIX)/share/doc/fwdd/examples/fwdd.toml
	install -D -m 0644 deploy/sysctl.d/90-fwdd.conf $(DESTDIR)$(PREFIX)/share/doc/fwdd/examples/90-fwdd.conf
	install -D -m 0644 deploy/grafana/fwdd-dashboard.json $(DESTDIR)$(PREFIX)/share/doc/fwdd/examples/fwdd-dashboard.json
	install -d -m 0755 $(DESTDIR)/etc/fwdd
	[ -e $(DESTDIR)/etc/fwdd/fwdd.toml ] || install -m 0644 packaging/deb/fwdd.toml $(DESTDIR)/etc/fwdd/fwdd.toml
	@echo "installed; now, as root: systemd-sysusers fwdd.conf && chown root:fwdd /etc/fwdd /etc/fwdd/fwdd.toml && chmod 0750 /etc/fwdd && chmod 0640 /etc/fwdd/fwdd.toml && systemctl daemon-reload && systemctl enable --now fwdd"

# fwdd_<version>_<arch>.deb in DEBDIR (dpkg-deb, go-md2man); see packaging/deb.
deb:
	packaging/deb/build.sh $(DEBDIR)

# The man pages, from docs/*.md.
man:
	mkdir -p bin/man
	go-md2man -in docs/fwdd.8.md -out bin/man/fwdd.8
	go-md2man -in docs/fwdd.toml.5.md -out bin/man/fwdd.toml.5

clean:
	rm -rf bin
