// Package status answers "is my forward working, how busy is it, is
// conntrack about to overflow" from the kernel alone, like `nft list`: it
// needs no running daemon.
package status

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/ctmark"
	"github.com/fwdd/fwdd/pkg/daemon"
	"github.com/fwdd/fwdd/pkg/health"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// Table says whether fwdd's table is in the kernel and as the config says.
type Table struct {
	Name          string `json:"name"`
	Present       bool   `json:"present"`
	MatchesConfig bool   `json:"matches_config"`
	// Problem says how the table differs from the config, when it does.
	Problem string `json:"problem,omitempty"`
}

// Conntrack is the fill of the conntrack table.
type Conntrack struct {
	Count int `json:"count"`
	Max   int `json:"max"`
}

// Forward is one forward's configuration and what the kernel counted.
type Forward struct {
	Name            string `json:"name"`
	Match           string `json:"match"`
	Target          string `json:"target"`
	SNAT            string `json:"snat"`
	Packets         uint64 `json:"packets"`
	Bytes           uint64 `json:"bytes"`
	PacketsOriginal uint64 `json:"packets_original"`
	PacketsReply    uint64 `json:"packets_reply"`
	BytesOriginal   uint64 `json:"bytes_original"`
	BytesReply      uint64 `json:"bytes_reply"`
	// Connections counts the forward's conntrack entries, closed
	// connections the kernel still remembers (TIME_WAIT) included;
	// Established only the open ones (TCP established, UDP assured).
	Connections int `json:"connections"`
	Established int `json:"established"`
	// NewConnections counts connections since the forward's counters were
	// created.
	NewConnections uint64 `json:"new_connections"`
	// Backends are the backends of a forward with several (none for one
	// with a single backend: that one is Target).
	Backends []Backend `json:"backends,omitempty"`
}

// Backend is one backend of a forward with several.
type Backend struct {
	Address string `json:"address"` // address:port (the first port of a range)
	Weight  int    `json:"weight"`
	// Health is "up", "down" or "unchecked" (no check has ended yet) as the
	// running daemon knows it; "not checked" for a forward with check =
	// "none"; "unknown" when no daemon of this config runs here.
	Health string `json:"health"`
	// Reason is the last check's result ("connected", "refused",
	// "timeout", "http status 500", ...), Since when it became that.
	Reason string     `json:"reason,omitempty"`
	Error  string     `json:"error,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
	// Connections and Established as for the forward, of the connections
	// DNAT sent to this backend; Packets and Bytes their traffic, both
	// directions, from conntrack accounting: live connections only.
	Connections int    `json:"connections"`
	Established int    `json:"established"`
	Packets     uint64 `json:"packets"`
	Bytes       uint64 `json:"bytes"`
}

// Report is the whole status.
type Report struct {
	Config      string    `json:"config"`
	Table       Table     `json:"table"`
	IPForward   bool      `json:"ip_forward"`
	IPv6Forward bool      `json:"ipv6_forward"`
	Conntrack   Conntrack `json:"conntrack"`
	Forwards    []Forward `json:"forwards"`
	// Blockers are other tables' forward chains that drop fwdd's connections.
	Blockers []nft.Blocker `json:"blockers"`
}

// Sources are where Collect reads; zero values mean this host.
type Sources struct {
	Kernel  *nft.Netlink
	Sysctls sysctl.Sysctls
	NetNS   int // for the conntrack dump
	// Only, when not empty, limits the report to these forwards; the work
	// done is proportional to the forwards reported.
	Only []string
	// Health is the backends' health from the running daemon's state
	// (daemon.FindDaemon); nil when no daemon runs.
	Health []daemon.BackendHealth
}

// dumpPerForward: up to this many forwards reported, their connections are
// counted with one dump each that the kernel filters by the forward's own
// mark, rather than one dump of all of fwdd's entries.
const dumpPerForward = 8

// Collect reads the kernel's view of the forwards of cfg.
func Collect(cfg *config.Config, src Sources) (*Report, error) {
	if src.Kernel == nil {
		src.Kernel = &nft.Netlink{}
	}
	if src.Sysctls == nil {
		src.Sysctls = sysctl.NewFS("")
	}
	fwds, err := selectForwards(cfg, src.Only)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(fwds))
	for i, f := range fwds {
		names[i] = f.Name
	}
	r := &Report{Config: cfg.Path, Table: Table{Name: "inet " + cfg.Daemon.Table}}
	present, err := src.Kernel.TableExists(cfg.Daemon.Table)
	if err != nil {
		return nil, fmt.Errorf("read nftables: %w", err)
	}
	r.Table.Present = present
	traffic := map[string]*nft.Traffic{}
	var ids map[string]uint32
	if present {
		if traffic, ids, err = readTraffic(cfg, src.Kernel, names); err != nil {
			return nil, err
		}
		m, err := nft.Compile(cfg, ids)
		if err != nil {
			return nil, err
		}
		m = daemon.WithHealth(m, src.Health)
		// The table's chains and sets, then the elements of the forwards
		// reported, by key.
		if t, err := src.Kernel.Read(cfg.Daemon.Table, false); err != nil {
			return nil, err
		} else if err := t.Differs(m); err != nil {
			r.Table.Problem = err.Error()
		} else if err := src.Kernel.VerifyForwards(m, names); err != nil {
			r.Table.Problem = err.Error()
		} else if missing := missingTraffic(names, traffic); missing != "" {
			r.Table.Problem = "no counters for forward " + missing
		} else {
			r.Table.MatchesConfig = true
		}
	} else {
		r.Table.Problem = "table not in the kernel: is fwdd running?"
	}
	r.IPForward = readBool(src.Sysctls, "net.ipv4.ip_forward")
	r.IPv6Forward = readBool(src.Sysctls, "net.ipv6.conf.all.forwarding")
	if count, max, err := conntrack.CountFrom(src.Sysctls); err == nil {
		r.Conntrack = Conntrack{Count: count, Max: max}
	}
	if r.Blockers, err = src.Kernel.ForeignBlockers(cfg.Daemon.Table, nft.ForwardedBy(cfg)); err != nil {
		return nil, err
	}
	live := map[uint32]conntrack.Live{}
	if present {
		if len(names) <= dumpPerForward {
			for _, name := range names {
				if t := traffic[name]; t != nil {
					if live[t.ID], err = conntrack.LiveOf(src.NetNS, cfg.Daemon.CtMark, t.ID); err != nil {
						return nil, err
					}
				}
			}
		} else if live, err = conntrack.LiveByID(src.NetNS, cfg.Daemon.CtMark); err != nil {
			return nil, err
		}
	}
	var byBackend map[conntrack.BackendKey]conntrack.BackendLive
	if present {
		var marks []uint32
		for _, f := range fwds {
			if t := traffic[f.Name]; t != nil && f.Balanced() {
				marks = append(marks, cfg.Daemon.CtMark.ForID(t.ID))
			}
		}
		if len(marks) > 0 {
			if byBackend, err = conntrack.LiveByBackend(src.NetNS, cfg.Daemon.CtMark, marks); err != nil {
				return nil, err
			}
		}
	}
	states := map[string]daemon.BackendHealth{}
	for _, h := range src.Health {
		states[h.Forward+"/"+h.Backend] = h
	}
	for _, f := range fwds {
		out := Forward{Name: f.Name, Match: Match(f), Target: Target(f), SNAT: SNAT(f)}
		if f.Balanced() {
			out.Backends = backends(f, cfg.Daemon.CtMark, traffic[f.Name], byBackend, states, src.Health != nil)
		}
		if t := traffic[f.Name]; t != nil {
			out.PacketsOriginal, out.PacketsReply = t.OrigPackets, t.ReplyPackets
			out.BytesOriginal, out.BytesReply = t.OrigBytes, t.ReplyBytes
			out.Packets, out.Bytes = t.Packets(), t.Bytes()
			out.NewConnections = t.New
			out.Connections, out.Established = live[t.ID].Total, live[t.ID].Established
		}
		r.Forwards = append(r.Forwards, out)
	}
	return r, nil
}

// backends reports the backends of a balanced forward f.
func backends(f *config.Forward, layout ctmark.Layout, t *nft.Traffic, live map[conntrack.BackendKey]conntrack.BackendLive,
	states map[string]daemon.BackendHealth, daemonRuns bool) []Backend {
	var out []Backend
	for _, b := range f.Backends {
		addr, span := daemon.BackendAddr(f, b)
		be := Backend{Address: addr.String(), Weight: b.Weight, Health: "unknown"}
		switch h, ok := states[f.Name+"/"+addr.String()]; {
		case f.Health.Kind == health.KindNone:
			be.Health = "not checked"
		case ok:
			be.Health, be.Reason, be.Error = h.Health, h.Reason, h.Error
			if !h.Since.IsZero() {
				be.Since = &h.Since
			}
		case daemonRuns:
			be.Health = "unchecked"
		}
		if t != nil {
			l := conntrack.OfBackend(live, layout.ForID(t.ID), addr, span)
			be.Connections, be.Established, be.Packets, be.Bytes = l.Total, l.Established, l.Packets, l.Bytes
		}
		out = append(out, be)
	}
	return out
}

// selectForwards returns the forwards of cfg named in only (all when empty),
// in config order.
func selectForwards(cfg *config.Config, only []string) ([]*config.Forward, error) {
	want := map[string]bool{}
	for _, n := range only {
		want[n] = true
	}
	var out []*config.Forward
	found := map[string]bool{}
	for i := range cfg.Forwards {
		if f := &cfg.Forwards[i]; len(want) == 0 || want[f.Name] {
			out = append(out, f)
			found[f.Name] = true
		}
	}
	for _, n := range only {
		if !found[n] {
			return nil, fmt.Errorf("no forward %q in %s", n, cfg.Path)
		}
	}
	return out, nil
}

// readTraffic reads the counters of the named forwards, by key, and
// returns the ids of all forwards (a function of the config).
func readTraffic(cfg *config.Config, k *nft.Netlink, names []string) (map[string]*nft.Traffic, map[string]uint32, error) {
	ids, err := nft.AssignIDs(cfg)
	if err != nil {
		return nil, nil, err
	}
	want := make(map[string]uint32, len(names))
	for _, n := range names {
		want[n] = ids[n]
	}
	traffic, err := k.ReadTrafficOf(cfg.Daemon.Table, cfg.Daemon.CtMark, want)
	if err != nil {
		return nil, nil, err
	}
	return traffic, ids, nil
}

func missingTraffic(names []string, traffic map[string]*nft.Traffic) string {
	for _, n := range names {
		if traffic[n] == nil {
			return n
		}
	}
	return ""
}

func readBool(s sysctl.Sysctls, name string) bool {
	v, err := s.Get(name)
	return err == nil && strings.TrimSpace(v) == "1"
}

// Match describes what a forward matches, e.g. "tcp,udp 53 on any local address via eth1 from 10.0.0.0/8".
func Match(f *config.Forward) string {
	protos := make([]string, len(f.Protos))
	for i, p := range f.Protos {
		protos[i] = p.String()
	}
	s := strings.Join(protos, ",") + " " + f.Port.String()
	if f.Local() {
		s += " on any local address"
	} else {
		s += " on " + f.Address.String()
	}
	if f.Interface != "" {
		s += " via " + f.Interface
	}
	if len(f.Sources) > 0 {
		src := make([]string, len(f.Sources))
		for i, p := range f.Sources {
			src[i] = p.String()
		}
		s += " from " + strings.Join(src, ",")
	}
	return s
}

// Target describes where a forward sends connections.
func Target(f *config.Forward) string {
	addr := f.To.String()
	if f.To.Is6() {
		addr = "[" + addr + "]"
	}
	if f.ToPort.IsZero() {
		return addr + " (same port)"
	}
	return addr + ":" + f.ToPort.String()
}

// SNAT describes a forward's source translation.
func SNAT(f *config.Forward) string {
	switch f.SNAT.Kind {
	case config.SNATNone:
		return "none"
	case config.SNATFixed:
		return f.SNAT.Addr.String()
	}
	return "masquerade"
}

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report as a readable table.
func (r *Report) WriteText(w io.Writer) error {
	state := "absent"
	if r.Table.Present {
		state = "present"
		if r.Table.MatchesConfig {
			state += ", matches " + r.Config
		} else {
			state += ", DIFFERS from " + r.Config
		}
	}
	fmt.Fprintf(w, "table %s: %s\n", r.Table.Name, state)
	if r.Table.Problem != "" {
		fmt.Fprintf(w, "  %s\n", r.Table.Problem)
	}
	fmt.Fprintf(w, "forwarding: ipv4 %s, ipv6 %s\n", onOff(r.IPForward), onOff(r.IPv6Forward))
	for _, b := range r.Blockers {
		fmt.Fprintf(w, "BLOCKED by %s: it drops fwdd's connections\n  allow them: %s\n", b, b.Allow)
	}
	if r.Conntrack.Max > 0 {
		fmt.Fprintf(w, "conntrack: %d of %d entries (%.1f%%)\n", r.Conntrack.Count, r.Conntrack.Max,
			100*float64(r.Conntrack.Count)/float64(r.Conntrack.Max))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FORWARD\tMATCH\tTARGET\tSNAT\tESTAB\tCONNS\tNEW\tPACKETS\tBYTES")
	balanced := false
	for _, f := range r.Forwards {
		target := f.Target
		if len(f.Backends) > 0 {
			target = fmt.Sprintf("%d backends", len(f.Backends))
			balanced = true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", f.Name, f.Match, target, f.SNAT,
			f.Established, f.Connections, f.NewConnections, f.Packets, humanBytes(f.Bytes))
	}
	if err := tw.Flush(); err != nil || !balanced {
		return err
	}
	// Backends: packets and bytes of their live connections only.
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FORWARD\tBACKEND\tWEIGHT\tHEALTH\tLAST CHECK\tESTAB\tCONNS\tLIVE PACKETS\tLIVE BYTES")
	for _, f := range r.Forwards {
		for _, b := range f.Backends {
			last := "-"
			if b.Reason != "" {
				last = b.Reason
				if b.Since != nil {
					last += " since " + b.Since.Local().Format(time.DateTime)
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%s\n", f.Name, b.Address, b.Weight, b.Health, last,
				b.Established, b.Connections, b.Packets, humanBytes(b.Bytes))
		}
	}
	return tw.Flush()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
