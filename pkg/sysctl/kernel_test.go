package sysctl_test

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// TestKernelNetNS checks, against the real /proc/sys of a sandbox
// namespace, that Get/Set act on that namespace only and that
// nf_conntrack_max gives the read-only error there.
func TestKernelNetNS(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	hostFwd, err := sysctl.NewFS("").Get("net.ipv4.ip_forward")
	if err != nil {
		t.Fatal(err)
	}

	s := sysctl.InNetNS(topo.Gateway.Fd(), sysctl.NewFS(""))

	if v, err := s.Get("net.ipv4.ip_forward"); err != nil || v != "0" {
		t.Fatalf("Get in fresh namespace = %q, %v; want 0", v, err)
	}
	old, changed, err := s.Set("net.ipv4.ip_forward", "1")
	if err != nil || old != "0" || !changed {
		t.Fatalf("Set = %q, %v, %v; want 0, true, nil", old, changed, err)
	}
	if v, _ := s.Get("net.ipv4.ip_forward"); v != "1" {
		t.Errorf("after Set, Get = %q, want 1", v)
	}
	if v, _ := topo.Backend.Sysctl("net.ipv4.ip_forward"); v != "0" {
		t.Errorf("another namespace's net.ipv4.ip_forward = %q, want 0", v)
	}
	if _, changed, err := s.Set("net.ipv4.ip_forward", "1"); err != nil || changed {
		t.Errorf("second Set = %v, %v; want unchanged", changed, err)
	}
	if v, _ := sysctl.NewFS("").Get("net.ipv4.ip_forward"); v != hostFwd {
		t.Errorf("host net.ipv4.ip_forward changed from %q to %q", hostFwd, v)
	}

	cur, err := s.Get("net.netfilter.nf_conntrack_max")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Set("net.netfilter.nf_conntrack_max", cur+"1")
	if !errors.Is(err, sysctl.ErrReadOnly) || !errors.Is(err, unix.EACCES) {
		t.Fatalf("Set nf_conntrack_max in child namespace = %v, want read-only (EACCES)", err)
	}
	want := "net.netfilter.nf_conntrack_max is read-only in this network namespace (it is host-wide); set it on the host"
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}

	// A missing interface, through the real tree.
	_, _, err = s.Set(sysctl.Conf("ipv4", "nosuch0.1", "rp_filter"), "2")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Set of missing interface = %v, want ErrNotExist", err)
	}
}
