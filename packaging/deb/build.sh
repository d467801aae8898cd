#!/bin/sh
# Builds fwdd_<version>_<arch>.deb with dpkg-deb: make deb runs it.
#   build.sh OUTDIR
# Needs go, dpkg-dev (dpkg-deb), go-md2man and git.
set -eu
out=${1:-.}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
version=$("$here/version.sh")
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
cd "$top"

# The binary: static (no cgo), position-independent, stripped; the version
# is git's, as `make build` sets it.
mkdir -p "$root/usr/sbin"
CGO_ENABLED=0 go build -trimpath -buildmode=pie \
	-ldflags "-s -w -X main.version=$(git describe --always --dirty 2>/dev/null || echo "$version")" \
	-o "$root/usr/sbin/fwdd" ./cmd/fwdd

install -D -m 0644 deploy/systemd/fwdd.service "$root/lib/systemd/system/fwdd.service"
install -D -m 0644 "$here/sysusers.conf" "$root/usr/lib/sysusers.d/fwdd.conf"
# postinst makes these 0750 (directories) and 0640 root:fwdd once the
# group exists.
install -D -m 0644 "$here/fwdd.toml" "$root/etc/fwdd/fwdd.toml"
install -d -m 0755 "$root/etc/fwdd/fwdd.d"
install -D -m 0644 deploy/bash-completion/fwdd "$root/usr/share/bash-completion/completions/fwdd"

man=$root/usr/share/man
mkdir -p "$man/man5" "$man/man8"
go-md2man -in docs/fwdd.8.md -out "$man/man8/fwdd.8"
go-md2man -in docs/fwdd.toml.5.md -out "$man/man5/fwdd.toml.5"

doc=$root/usr/share/doc/fwdd
install -D -m 0644 "$here/copyright" "$doc/copyright"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 deploy/fwdd.toml "$doc/examples/fwdd.toml"
install -D -m 0644 deploy/sysctl.d/90-fwdd.conf "$doc/examples/90-fwdd.conf"
install -D -m 0644 deploy/grafana/fwdd-dashboard.json "$doc/examples/fwdd-dashboard.json"
date=$(git log -1 --format=%aD 2>/dev/null || date -R)
cat >"$doc/changelog" <<CHANGES
fwdd ($version) unstable; urgency=medium

  * Built from git $(git describe --always --dirty 2>/dev/null || echo unknown).

 -- fwdd developers <fwdd@lists.example.org>  $date
CHANGES
# Reproducible: compressed without names or times.
gzip -9n "$man/man5/fwdd.toml.5" "$man/man8/fwdd.8" "$doc/changelog" "$doc/README.md" "$doc/examples/fwdd-dashboard.json"

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$here/control.in" >"$root/DEBIAN/control"
install -m 0644 "$here/conffiles" "$root/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

deb=$out/fwdd_${version}_$arch.deb
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) \
	dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
