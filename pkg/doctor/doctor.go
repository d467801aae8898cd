// Package doctor is `fwdd doctor`: the troubleshooting matrix of a port
// forwarding gateway, automated. Each check is a small function over an
// Env that reads this host (its network namespace) and returns one result
// per thing it looked at, ok, warn or fail; every warning and failure says
// the exact command or config change that fixes it. Doctor only reads: it
// never changes the firewall, sysctls or interfaces (tuning is advice).
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// Status is a check's verdict.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one line of the report.
type Result struct {
	Check   string `json:"check"`
	Subject string `json:"subject,omitempty"` // interface, forward, chain... the check looked at
	Status  Status `json:"status"`
	Message string `json:"message"`
	// Fix is the command or config change that resolves a warning or failure.
	Fix string `json:"fix,omitempty"`
	// Advice marks tuning results: suggestions, never applied by fwdd.
	Advice bool `json:"advice,omitempty"`
}

// Env is what the checks read. Zero fields mean this host.
type Env struct {
	Cfg      *config.Config
	StateDir string // the daemon's state directory (its pid)
	Probe    bool   // connect to each backend
	Kernel   *nft.Netlink
	Sysctls  sysctl.Sysctls
	Proc     string        // /proc
	Sys      string        // /sys
	Sample   time.Duration // how long CPU time and counters are watched (default 1s)
	// ProbeTimeout bounds each backend probe (default 2s).
	ProbeTimeout time.Duration

	net *netInfo // links and addresses, read once
	// dial, when set, opens probe connections in place of net.DialTimeout (tests).
	dial func(network, address string, timeout time.Duration) (net.Conn, error)
}

func (e *Env) defaults() {
	if e.Kernel == nil {
		e.Kernel = &nft.Netlink{}
	}
	if e.Sysctls == nil {
		e.Sysctls = sysctl.NewFS("")
	}
	if e.Proc == "" {
		e.Proc = "/proc"
	}
	if e.Sys == "" {
		e.Sys = "/sys"
	}
	if e.Sample == 0 {
		e.Sample = time.Second
	}
	if e.ProbeTimeout == 0 {
		e.ProbeTimeout = 2 * time.Second
	}
}

// check is one entry of the matrix.
type check struct {
	name string
	run  func(*Env) []Result
}

// checks in the order of the report: the gateway basics, fwdd itself,
// the rest of the firewall, the paths to the backends, then tuning.
var checks = []check{
	{"ip_forward", checkForwarding},
	{"rp_filter", checkRPFilter},
	{"daemon", checkDaemon},
	{"table", checkTable},
	{"other_firewall", checkForeign},
	{"iptables_legacy", checkLegacy},
	{"conntrack", checkConntrack},
	{"backend", checkBackends},
	{"counters", checkCounters},
	{"rx_drops", checkDrops},
	{"offloads", checkOffloads},
	{"conntrack_buckets", checkBuckets},
	{"softirq", checkSoftirq},
	{"rx_queues", checkQueues},
}

// Run runs every check.
func Run(env Env) []Result {
	env.defaults()
	defer func() {
		if env.net != nil {
			_ = env.net.conn.Close()
		}
	}()
	var out []Result
	for _, c := range checks {
		rs := c.run(&env)
		for i := range rs {
			if rs[i].Check == "" {
				rs[i].Check = c.name
			}
		}
		out = append(out, rs...)
	}
	return out
}

// Failed reports whether any check failed.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// WriteText writes one line per result, the fix indented below it.
func WriteText(w io.Writer, rs []Result) error {
	var fails, warns int
	for _, r := range rs {
		subject := ""
		if r.Subject != "" {
			subject = " " + r.Subject
		}
		tag := string(r.Status)
		if r.Advice && r.Status != OK {
			tag = "advice"
		}
		if _, err := fmt.Fprintf(w, "%-6s %s%s: %s\n", tag, r.Check, subject, r.Message); err != nil {
			return err
		}
		if r.Fix != "" {
			if _, err := fmt.Fprintf(w, "       fix: %s\n", r.Fix); err != nil {
				return err
			}
		}
		switch r.Status {
		case Fail:
			fails++
		case Warn:
			warns++
		}
	}
	_, err := fmt.Fprintf(w, "%d results: %d failed, %d warnings\n", len(rs), fails, warns)
	return err
}

// WriteJSON writes the results as a JSON array.
func WriteJSON(w io.Writer, rs []Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if rs == nil {
		rs = []Result{}
	}
	return enc.Encode(rs)
}

func ok(subject, format string, args ...any) Result {
	return Result{Subject: subject, Status: OK, Message: fmt.Sprintf(format, args...)}
}

func warn(subject, fix, format string, args ...any) Result {
	return Result{Subject: subject, Status: Warn, Message: fmt.Sprintf(format, args...), Fix: fix}
}

func fail(subject, fix, format string, args ...any) Result {
	return Result{Subject: subject, Status: Fail, Message: fmt.Sprintf(format, args...), Fix: fix}
}

func hasFamily(cfg *config.Config, v6 bool) bool {
	for i := range cfg.Forwards {
		if cfg.Forwards[i].IPv6() == v6 {
			return true
		}
	}
	return false
}

func readInt(s sysctl.Sysctls, name string) (int, error) {
	v, err := s.Get(name)
	if err != nil {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscan(strings.TrimSpace(v), &n); err != nil {
		return 0, fmt.Errorf("parse %s = %q: %w", sysctl.Display(name), v, err)
	}
	return n, nil
}
