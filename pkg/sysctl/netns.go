package sysctl

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// NetNS runs every call of an inner Sysctls on a locked OS thread moved into
// a network namespace, so that /proc/sys/net shows that namespace (see the
// package documentation). Parameters outside net.* are not namespaced by
// the network namespace and show whatever they show to the process.
type NetNS struct {
	fd    int
	inner Sysctls
}

// InNetNS returns a Sysctls acting in the network namespace open as fd
// (e.g. from netns.GetFromName). The caller keeps fd open while it is used.
// inner is usually NewFS("").
func InNetNS(fd int, inner Sysctls) *NetNS { return &NetNS{fd: fd, inner: inner} }

// Get implements Sysctls.
func (n *NetNS) Get(name string) (v string, err error) {
	if nsErr := n.do(func() { v, err = n.inner.Get(name) }); nsErr != nil {
		return "", fmt.Errorf("get %s: %w", Display(name), nsErr)
	}
	return v, err
}

// Set implements Sysctls.
func (n *NetNS) Set(name, value string) (old string, changed bool, err error) {
	if nsErr := n.do(func() { old, changed, err = n.inner.Set(name, value) }); nsErr != nil {
		// fn may have run: report what it did along with the failure.
		return old, changed, fmt.Errorf("set %s: %w", Display(name), nsErr)
	}
	return old, changed, err
}

// do runs fn in the namespace on a fresh goroutine. If the thread cannot be
// moved back, the goroutine exits still locked and the runtime discards the
// thread instead of letting another goroutine run in the wrong namespace.
func (n *NetNS) do(fn func()) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("leave network namespace: %w", err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	return <-done
}
