package main

import (
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// A burst of SIGHUPs that nobody reads (the daemon busy reloading, or still
// starting) does not crowd out a SIGTERM.
func TestStopSignalAfterReloadBurst(t *testing.T) {
	reloads, stops := notifySignals()
	t.Cleanup(func() { signal.Stop(reloads); signal.Stop(stops) })
	for range 10 {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // one at a time, not merged by the kernel
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for sig := os.Signal(nil); sig != syscall.SIGTERM; {
		select {
		case sig = <-stops:
			if sig != syscall.SIGTERM {
				t.Errorf("%v on the stop channel", sig)
			}
		case <-timeout:
			t.Fatal("the SIGTERM after 10 SIGHUPs was dropped")
		}
	}
	if len(reloads) == 0 {
		t.Error("no reload pending after 10 SIGHUPs")
	}
}
