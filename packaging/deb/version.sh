#!/bin/sh
# Prints a Debian version for this checkout, from `git describe`:
#   v1.2.0               -> 1.2.0
#   v1.2.0-5-gabc1234    -> 1.2.0+5.gabc1234
#   v1.3.0-rc1           -> 1.3.0~rc1 (sorts before 1.3.0)
#   abc1234 (no tag)     -> 0~git<commits>.gabc1234
# and "+dirty" for uncommitted changes. Debian versions must start with a
# digit and, for a native package, hold no '-'.
set -eu
d=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
dirty=
case $d in *-dirty) dirty=+dirty; d=${d%-dirty} ;; esac
case $d in
v[0-9]* | [0-9]*.*)
	d=${d#v}
	# <tag>-<n>-g<hash>: the only '-'s left are describe's.
	v=$(printf '%s' "$d" | sed -E 's/-([0-9]+)-g([0-9a-f]+)$/+\1.g\2/; s/-(rc|alpha|beta)/~\1/; s/-/./g')
	;;
*)
	n=$(git rev-list --count HEAD 2>/dev/null || echo 0)
	v="0~git$n.g$(printf '%s' "$d" | tr -c '0-9a-zA-Z' '.')"
	;;
esac
printf '%s%s\n' "$v" "$dirty"
