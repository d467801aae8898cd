package daemon

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// clockGettime reads CLOCK_MONOTONIC, which systemd expects in MONOTONIC_USEC.
func clockGettime(ts *syscall.Timespec) error {
	var t unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &t); err != nil {
		return err
	}
	ts.Sec, ts.Nsec = t.Sec, t.Nsec
	return nil
}
