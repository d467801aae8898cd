#!/bin/sh
# keepalived notify hook for a pair of fwdd gateways (deploy/ha/README.md):
#   fwdd-notify.sh primary|backup|fault
# as conntrackd's own primary-backup.sh, for FTFW replication.
CONNTRACKD=/usr/sbin/conntrackd
CONF=/etc/conntrackd/conntrackd.conf

run() {
    "$CONNTRACKD" -C "$CONF" "$@" || logger -t fwdd-notify "conntrackd $* failed" 2>/dev/null || true
}

case "$1" in
primary)
    run -c # commit the replicated connections (external cache) into the kernel
    run -f # flush the internal and external caches
    run -R # resync the internal cache with the kernel's table
    run -B # send a bulk update to the other node
    ;;
backup)
    run -t # shorten the kernel's timers: entries of the old master role expire
    run -n # ask the master for a full resync
    ;;
fault)
    run -t
    ;;
*)
    echo "usage: $0 primary|backup|fault" >&2
    exit 1
    ;;
esac
exit 0
