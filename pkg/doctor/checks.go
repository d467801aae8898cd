package doctor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/daemon"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// markTag returns the tag of fwdd's connections in the configured ct mark
// layout and the bits it occupies: what an accept rule matches.
func markTag(cfg *config.Config) (tag, mask uint32) {
	return cfg.Daemon.CtMark.Tag, cfg.Daemon.CtMark.TagMask
}

func checkForwarding(e *Env) []Result {
	var out []Result
	one := func(v6 bool, name, key string) {
		if !hasFamily(e.Cfg, v6) {
			return
		}
		v, err := readInt(e.Sysctls, key)
		switch {
		case err != nil:
			out = append(out, warn(name, "", "cannot read %s: %v", sysctl.Display(key), err))
		case v == 0:
			out = append(out, fail(name, fmt.Sprintf("sysctl -w %s=1, and set [sysctl] ip_forward = true in %s", sysctl.Display(key), e.Cfg.Path),
				"%s = 0: the kernel forwards no packet, so no forward works", sysctl.Display(key)))
		default:
			out = append(out, ok(name, "%s = %d", sysctl.Display(key), v))
		}
	}
	one(false, "ipv4", "net.ipv4.ip_forward")
	one(true, "ipv6", "net.ipv6.conf.all.forwarding")
	if len(out) == 0 {
		out = append(out, ok("", "no forwards configured"))
	}
	return out
}

// rpInterfaces are the interfaces whose reverse-path filter matters: those
// a forward names, those holding a forward's address, and for forwards on
// any local address every interface that is up.
func rpInterfaces(cfg *config.Config, n *netInfo) []string {
	set := map[string]bool{}
	for i := range cfg.Forwards {
		f := &cfg.Forwards[i]
		if f.IPv6() {
			continue // rp_filter is IPv4's
		}
		switch {
		case f.Interface != "":
			set[f.Interface] = true
		case !f.Local():
			if l := n.owner(f.Address); l != "" {
				set[l] = true
			}
		default:
			for _, l := range n.links {
				if l.up && !l.loopback {
					set[l.name] = true
				}
			}
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func checkRPFilter(e *Env) []Result {
	n, err := e.netInfo()
	if err != nil {
		return []Result{warn("", "", "cannot list interfaces: %v", err)}
	}
	all, err := readInt(e.Sysctls, sysctl.Conf("ipv4", "all", "rp_filter"))
	if err != nil {
		return []Result{warn("", "", "cannot read rp_filter: %v", err)}
	}
	var out []Result
	for _, ifc := range rpInterfaces(e.Cfg, n) {
		v, err := readInt(e.Sysctls, sysctl.Conf("ipv4", ifc, "rp_filter"))
		if err != nil {
			out = append(out, warn(ifc, "", "cannot read rp_filter: %v", err))
			continue
		}
		eff := max(v, all) // the kernel uses the larger of all and the interface's
		if eff == 1 {
			out = append(out, warn(ifc,
				fmt.Sprintf("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2, or set [sysctl] rp_filter = \"loose\"", strings.ReplaceAll(ifc, ".", "/")),
				"rp_filter is strict (all=%d, %s=%d): packets from clients whose replies would leave by another interface are dropped", all, ifc, v))
			continue
		}
		out = append(out, ok(ifc, "rp_filter = %d (%s)", eff, map[int]string{0: "off", 2: "loose"}[eff]))
	}
	if len(out) == 0 {
		out = append(out, ok("", "no IPv4 interface receives forwarded traffic"))
	}
	return out
}

func checkDaemon(e *Env) []Result {
	st, err := daemon.ReadState(e.StateDir)
	if err != nil {
		return []Result{fail("", "systemctl start fwdd (then journalctl -u fwdd -p warning)", "fwdd is not running: %v", err)}
	}
	if err := syscall.Kill(st.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return []Result{fail("", "systemctl start fwdd (then journalctl -u fwdd -p warning)",
			"fwdd is not running: pid %d from %s is gone", st.PID, filepath.Join(e.StateDir, "state.json"))}
	}
	if !st.OK {
		return []Result{warn("", "fix the file (fwdd check -c "+e.Cfg.Path+"), then fwdd reload",
			"fwdd runs (pid %d) but its latest apply failed: %s", st.PID, st.Error)}
	}
	return []Result{ok("", "fwdd runs (pid %d), %d forwards applied at %s", st.PID, st.Forwards, st.Time.Format("2006-01-02 15:04:05"))}
}

func checkTable(e *Env) []Result {
	table := e.Cfg.Daemon.Table
	name := "inet " + table
	o, err := e.Kernel.Ownership(table)
	if err != nil {
		return []Result{fail(name, "run fwdd doctor as root", "cannot read nftables: %v", err)}
	}
	if !o.Exists {
		return []Result{fail(name, "systemctl restart fwdd", "table %s is not in the kernel: no forward works", name)}
	}
	if !o.Owned {
		return []Result{fail(name, fmt.Sprintf("choose another [daemon] table in %s (the table of that name belongs to another program)", e.Cfg.Path),
			"table %s was not created by fwdd (chains: %s)", name, strings.Join(o.Chains, ", "))}
	}
	have, err := e.Kernel.Read(table, true)
	if err != nil {
		return []Result{fail(name, "run fwdd doctor as root", "cannot read %s: %v", name, err)}
	}
	ids, err := nft.AssignIDs(e.Cfg)
	if err != nil {
		return []Result{fail(name, "", "%v", err)}
	}
	m, err := nft.Compile(e.Cfg, ids)
	if err != nil {
		return []Result{fail(name, "", "compile %s: %v", e.Cfg.Path, err)}
	}
	if st, err := daemon.ReadState(e.StateDir); err == nil {
		m = daemon.WithHealth(m, st.Backends) // backends found down are out of the kernel
	}
	if err := have.Differs(m); err != nil {
		return []Result{fail(name, "fwdd reload -c "+e.Cfg.Path+" (fwdd diff -c "+e.Cfg.Path+" shows what changes)",
			"table %s differs from %s: %v", name, e.Cfg.Path, err)}
	}
	return []Result{ok(name, "present and as %s says (%d forwards)", e.Cfg.Path, len(e.Cfg.Forwards))}
}

func checkForeign(e *Env) []Result {
	tag, mask := markTag(e.Cfg)
	fw := nft.ForwardedBy(e.Cfg)
	bs, err := e.Kernel.ForeignBlockers(e.Cfg.Daemon.Table, fw)
	if err != nil {
		return []Result{warn("", "run fwdd doctor as root", "cannot read other tables: %v", err)}
	}
	var out []Result
	blocking := map[string]bool{} // "family table"
	for _, b := range bs {
		out = append(out, fail(fmt.Sprintf("%s %s %s", b.Family, b.Table, b.Chain), b.Allow,
			"%s: it drops fwdd's forwarded connections", b.Reason))
		blocking[b.Family+" "+b.Table] = true
	}
	tables, err := e.Kernel.Tables()
	if err == nil {
		for _, t := range tables {
			if !fw.Sees(t.Family) { // e.g. ip6 tables without an IPv6 forward
				continue
			}
			switch t.Owner {
			case "firewalld":
				// Its forward chain accepts DNATed connections (all of
				// fwdd's) before any zone or policy is consulted, unless
				// StrictForwardPorts=yes: then it is a blocker above.
				if !blocking[t.Family+" "+t.Name] {
					out = append(out, ok(t.Family+" "+t.Name,
						"firewalld is active and lets fwdd's connections through: they are DNATed, and its forward chain accepts DNATed connections (it would reject them with StrictForwardPorts=yes in /etc/firewalld/firewalld.conf)"))
				}
			case "ufw":
				out = append(out, warn(t.Family+" "+t.Name, nft.AllowRule("ufw", t.Family, t.Name, "", tag, mask),
					"ufw is active: its default routed policy drops forwarded traffic"))
			}
		}
	}
	if !slices.ContainsFunc(out, func(r Result) bool { return r.Status != OK }) {
		// The layout in force, for a firewall added later.
		out = append(out, ok("", "no other table drops fwdd's connections (they carry ct mark and %#08x == %#08x)", mask, tag))
	}
	return out
}

func checkConntrack(e *Env) []Result {
	count, limit, err := conntrack.CountFrom(e.Sysctls)
	if err != nil {
		return []Result{warn("", "", "%v", err)}
	}
	return []Result{conntrackResult(count, limit, e.Cfg.Conntrack, e.settable("net.netfilter.nf_conntrack_max"))}
}

// conntrackResult judges the conntrack table's fill. settable says whether
// nf_conntrack_max may be written here: if not, [sysctl] conntrack_max
// would make fwdd refuse to start, so the fix names the host instead.
func conntrackResult(count, limit int, c config.Conntrack, settable bool) Result {
	if limit <= 0 {
		return ok("", "%d entries, no limit", count)
	}
	pct := 100 * float64(count) / float64(limit)
	fix := fmt.Sprintf("raise the limit: [sysctl] conntrack_max = %d (or sysctl -w net.netfilter.nf_conntrack_max=%d), or shorten conntrack timeouts", 2*limit, 2*limit)
	if !settable {
		fix = fmt.Sprintf("raise the limit on the host (sysctl -w net.netfilter.nf_conntrack_max=%d there: it is host-wide and read-only here, so fwdd cannot set it), or shorten conntrack timeouts", 2*limit)
	}
	switch {
	case pct >= float64(c.CriticalPercent):
		return fail("", fix, "%d of %d entries (%.1f%%): new connections are about to be dropped", count, limit, pct)
	case pct >= float64(c.WarnPercent):
		return warn("", fix, "%d of %d entries (%.1f%%)", count, limit, pct)
	}
	return ok("", "%d of %d entries (%.1f%%)", count, limit, pct)
}

func checkCounters(e *Env) []Result {
	if present, err := e.Kernel.TableExists(e.Cfg.Daemon.Table); err != nil || !present {
		return []Result{ok("", "no table to read counters from (see table)")}
	}
	traffic, err := e.Kernel.ReadTraffic(e.Cfg.Daemon.Table, e.Cfg.Daemon.CtMark)
	if err != nil {
		return []Result{warn("", "", "cannot read the counters: %v", err)}
	}
	packets := map[string]uint64{}
	for name, t := range traffic {
		packets[name] = t.Packets()
	}
	return zeroCounters(e.Cfg, packets)
}

// zeroCounters flags forwards that counted nothing while others did: the
// gateway gets traffic, but none of it matches them.
func zeroCounters(cfg *config.Config, packets map[string]uint64) []Result {
	var moving int
	for _, p := range packets {
		if p > 0 {
			moving++
		}
	}
	var out []Result
	for i := range cfg.Forwards {
		f := &cfg.Forwards[i]
		p, known := packets[f.Name]
		switch {
		case !known:
			continue
		case p == 0 && moving > 0:
			out = append(out, warn(f.Name, fmt.Sprintf("check the forward's address, interface and sources in %s (line %d), and that its clients reach this host: tcpdump -ni any port %d", cfg.Path, f.Line, f.Port.Lo),
				"no packet matched it while %d other forwards counted traffic", moving))
		default:
			out = append(out, ok(f.Name, "%d packets", p))
		}
	}
	if len(out) == 0 {
		out = append(out, ok("", "no counters to compare"))
	}
	return out
}

// legacyTables lists the iptables-legacy tables that exist in this
// namespace (the kernel creates one when a legacy tool first uses it).
func legacyTables(proc string) map[string][]string {
	out := map[string][]string{}
	for fam, file := range map[string]string{"ip": "ip_tables_names", "ip6": "ip6_tables_names"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", file))
		if err != nil {
			continue
		}
		out[fam] = strings.Fields(string(b))
	}
	return out
}

func checkLegacy(e *Env) []Result {
	tag, mask := markTag(e.Cfg)
	fw := nft.ForwardedBy(e.Cfg)
	var out []Result
	for fam, tables := range legacyTables(e.Proc) {
		cmd := "iptables-legacy"
		if fam == "ip6" {
			cmd = "ip6tables-legacy"
		}
		allow := fmt.Sprintf("%s -I FORWARD -m connmark --mark %#08x/%#08x -j ACCEPT", cmd, tag, mask)
		for _, t := range tables {
			info, err := readLegacy(fam, t)
			if err != nil {
				out = append(out, warn(fam+" "+t, cmd+"-save -t "+t, "cannot read the legacy table: %v", err))
				continue
			}
			switch {
			case !fw.Sees(fam) && (info.rules > 0 || info.forwardDrop):
				out = append(out, ok(fam+" "+t, "iptables-legacy table in use, but fwdd forwards no %s traffic through it", map[string]string{"ip": "IPv4", "ip6": "IPv6"}[fam]))
			case t == "filter" && info.forwardDrop && info.rules == 0:
				out = append(out, fail(fam+" "+t, allow, "iptables-legacy FORWARD policy is DROP: it drops fwdd's connections"))
			case t == "filter" && info.forwardDrop:
				out = append(out, warn(fam+" "+t, "make sure a rule there accepts fwdd's connections: "+allow,
					"iptables-legacy FORWARD policy is DROP, with %d rules in the table", info.rules))
			case info.rules > 0:
				out = append(out, warn(fam+" "+t, cmd+"-save -t "+t+" shows them; nft list ruleset does not",
					"iptables-legacy rules in use (%d): they run beside nftables", info.rules))
			default:
				out = append(out, ok(fam+" "+t, "iptables-legacy table exists, no rules"))
			}
		}
	}
	if len(out) == 0 {
		out = append(out, ok("", "no iptables-legacy tables"))
	}
	slices.SortFunc(out, func(a, b Result) int { return strings.Compare(a.Subject, b.Subject) })
	return out
}
