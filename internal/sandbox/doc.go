// Package sandbox builds throwaway network-namespace topologies for fwdd's
// end-to-end tests, its demo program and its benchmark.
//
// Everything the sandbox creates lives in named network namespaces
// ("ip netns") whose names share a unique per-run prefix of the form
// "<base>-<6 hex digits>", e.g. "fwdd-3fa9c1-client". The sandbox never
// touches the root namespace's interfaces, firewall, routes or sysctls:
// veth pairs are created directly inside the gateway namespace (ip -n) with
// their peer placed straight into the leaf namespace, and sysctls are only
// written through pkg/sysctl on a thread moved into a sandbox namespace.
//
// # Standard topology
//
// Every segment is its own veth pair; the leaf end is called "eth0" in the
// leaf namespace and the gateway end has a descriptive name:
//
//	host     netns            leaf eth0                gateway iface  gateway addresses
//	client   <prefix>-client  10.11.0.2/24 fd11::2/64  cli0           10.11.0.1/24 fd11::1/64
//	client2  <prefix>-client2 10.33.0.2/24 fd33::2/64  cli1           10.33.0.1/24 fd33::1/64
//	backend  <prefix>-backend 10.22.0.2/24 fd22::2/64  bak0           10.22.0.1/24 fd22::1/64
//	other    <prefix>-other   10.44.0.2/24 fd44::2/64  oth0           10.44.0.1/24 fd44::1/64
//
// The gateway lives in "<prefix>-gateway". client2 (a second client-side
// interface, useful for interface-restriction tests) and other (a host that
// is reachable only THROUGH the gateway, for transit-traffic tests) are
// optional; see [Options].
//
// Every leaf host has IPv4 and IPv6 default routes via the gateway's address
// on its segment, so backends reply through the gateway even without SNAT.
// The loopback interface is up in every namespace, IPv6 duplicate address
// detection is disabled and all addresses are added with "nodad", so they
// are usable at once.
//
// The gateway starts with net.ipv4.ip_forward=0 and
// net.ipv6.conf.all.forwarding=0 (set explicitly, because a new namespace
// may inherit IPv4 settings from the root namespace): enabling forwarding
// is fwdd's job, or the test's via [Host.SetSysctl].
//
// # Processes and files
//
// [Host.Start] and [Host.StartCmd] run programs in a namespace, each in a
// process group of its own: a Ctrl-C at the terminal reaches only the
// program that built the sandbox, which can then stop them in order. Files
// a run needs (configs, sockets, daemons' state) go in [Topology.Dir].
// internal/harness runs fwdd this way.
//
// # Cleanup
//
// [New] registers cleanup with testing.TB; [Build] returns a [Topology] whose
// Close is idempotent. Close stops the processes the sandbox started (by
// PID), closes the traffic helpers and namespace handles, deletes the
// namespaces and removes the run directory. A run holds an flock on a lock
// file in /run/fwdd-sandbox for its whole life time, so [Sweep] can tell the
// namespaces (and run directory) of a crashed run (lock file present but
// not locked) from those of a run that is still going, in this process or
// another one.
package sandbox
