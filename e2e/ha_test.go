package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
	"github.com/fwdd/fwdd/pkg/nft"
)

// healthCode runs `fwdd health` in h and returns its exit code and output.
func healthCode(t *testing.T, h *sandbox.Host, cfgPath, stateDir string) (int, string) {
	t.Helper()
	out, err := h.Run(ctxT(t), fwddBin, "health", "-c", cfgPath, "--state-dir", stateDir)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("fwdd health: %v", err)
	return -1, ""
}

// fwdd health, the track_script of an HA pair: each failure has its code.
func TestKernelHealth(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	cfg := "[daemon]\non_stop = \"keep\"\n" + reloadBefore
	d := startFwdd(t, topo, cfg)
	check := func(want int, wantOut string) {
		t.Helper()
		code, out := healthCode(t, topo.Gateway, d.cfgPath, d.stateDir)
		if code != want || !strings.Contains(out, wantOut) {
			t.Errorf("fwdd health: exit %d, want %d (%q):\n%s", code, want, wantOut, out)
		}
	}
	check(0, "ok: table inet fwdd matches")

	// A running daemon repairs its edited table by itself (self-healing):
	// health is ok again once it has.
	nftRun(t, topo, "add rule inet fwdd dispatch tcp dport 9 accept\n")
	if err := sandbox.Eventually(10*time.Second, func() error {
		if code, out := healthCode(t, topo.Gateway, d.cfgPath, d.stateDir); code != 0 {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		return nil
	}); err != nil {
		t.Errorf("fwdd health after the daemon healed its table: %v", err)
	}

	// A file edited but not reloaded, even a bad one, is no fault of the
	// node, which forwards the config in force: failing it over would move
	// the VIPs to a peer most likely edited the same way. The message says.
	writeConfig(t, d.cfgPath, cfg+"\n[[forward]]\nname = \"bad\"\n")
	check(0, "is not valid")
	writeConfig(t, d.cfgPath, cfg+"\n[[forward]]\nname = \"extra\"\nport = 90\nto = \"10.22.0.2\"\n")
	check(0, "is not the config in force: reload it")
	withoutGoes := strings.Split(cfg, "[[forward]]\nname = \"goes\"")[0]
	writeConfig(t, d.cfgPath, withoutGoes)
	check(0, "is not the config in force: reload it")
	writeConfig(t, d.cfgPath, cfg)
	check(0, "ok")

	d.stop() // on_stop = "keep": the table stays, the daemon is gone
	check(5, "no daemon")
	nftRun(t, topo, "delete element inet fwdd dnat4_port { tcp . 81 }\n") // nobody repairs it now
	check(4, "lacks the element tcp . 81 of forward moves")
	// The node is checked against the config in force, not the file: a
	// forward gone from the file is still checked.
	writeConfig(t, d.cfgPath, withoutGoes)
	nftRun(t, topo, "add element inet fwdd dnat4_port { tcp . 81 : 10.22.0.2 . 8081 }\n"+
		"delete element inet fwdd dnat4_port { tcp . 82 }\n")
	check(4, "lacks the element tcp . 82 of forward goes")
	writeConfig(t, d.cfgPath, cfg)
	nftRun(t, topo, "add rule inet fwdd dispatch tcp dport 9 accept\n") // nobody repairs it now
	check(4, "chain dispatch has")
	nftRun(t, topo, "delete table inet fwdd\n")
	check(3, "not in the kernel")
}

// haNode is one gateway of the HA pair: fwdd, conntrackd and keepalived in
// its namespace, each with its files in the node's own directory.
type haNode struct {
	name     string // gw1, gw2: keepalived's config id
	host     *sandbox.Host
	dir      string
	cfgPath  string
	stateDir string
	procs    map[string]*sandbox.Proc
}

// haFile reads a file of deploy/ha and applies the replacements, each of
// which must occur: the test runs the shipped examples.
func haFile(t *testing.T, name string, repl ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "ha", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i < len(repl); i += 2 {
		if !strings.Contains(s, repl[i]) {
			t.Fatalf("deploy/ha/%s no longer contains %q", name, repl[i])
		}
		s = strings.ReplaceAll(s, repl[i], repl[i+1])
	}
	return s
}

func run(t *testing.T, h *sandbox.Host, args ...string) string {
	t.Helper()
	out, err := h.Run(ctxT(t), args...)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	return string(out)
}

// newHANode writes the node's files from deploy/ha; health is the fwdd
// binary keepalived's track script runs.
func newHANode(t *testing.T, h *sandbox.Host, name, health string) *haNode {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := &haNode{name: name, host: h, dir: dir, cfgPath: filepath.Join(dir, "fwdd.toml"),
		stateDir: filepath.Join(dir, "state"), procs: map[string]*sandbox.Proc{}}
	writeConfig(t, n.cfgPath, haFile(t, "fwdd.toml"))
	ctConf := filepath.Join(dir, "conntrackd.conf")
	repl := []string{
		"/var/lock/conntrackd.lock", filepath.Join(dir, "conntrackd.lock"),
		"/var/run/conntrackd.ctl", filepath.Join(dir, "conntrackd.ctl"),
		"/var/log/conntrackd.log", filepath.Join(dir, "conntrackd.log"),
	}
	if name == "gw2" {
		repl = append(repl, "IPv4_address 192.168.100.1\n        IPv4_Destination_Address 192.168.100.2",
			"IPv4_address 192.168.100.2\n        IPv4_Destination_Address 192.168.100.1")
	}
	writeFile(t, ctConf, haFile(t, "conntrackd.conf", repl...), 0o644)
	notify := filepath.Join(dir, "fwdd-notify.sh")
	writeFile(t, notify, haFile(t, "fwdd-notify.sh", "/etc/conntrackd/conntrackd.conf", ctConf), 0o755)
	writeFile(t, filepath.Join(dir, "keepalived.conf"), haFile(t, "keepalived.conf",
		"/usr/sbin/fwdd health -c /etc/fwdd/fwdd.toml", health+" health -c "+n.cfgPath+" --state-dir "+n.stateDir,
		"/etc/keepalived/fwdd-notify.sh", notify), 0o644)
	return n
}

func writeFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func (n *haNode) start(t *testing.T, name string, ready func() error, args ...string) {
	t.Helper()
	p, err := n.host.Start(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	n.procs[name] = p
	if err := sandbox.Eventually(20*time.Second, func() error {
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited: %s", name, p.Output())
		default:
		}
		return ready()
	}); err != nil {
		t.Fatalf("%s: %s did not start: %v", n.name, name, err)
	}
}

// up starts fwdd, conntrackd and keepalived, in that order.
func (n *haNode) up(t *testing.T) {
	t.Helper()
	n.start(t, "fwdd", func() error {
		if !strings.Contains(n.procs["fwdd"].Output(), "\tready\t") {
			return errors.New("not ready")
		}
		return nil
	}, fwddBin, "run", "-c", n.cfgPath, "--state-dir", n.stateDir)
	ctConf := filepath.Join(n.dir, "conntrackd.conf")
	n.start(t, "conntrackd", func() error {
		_, err := n.host.Run(ctxT(t), "conntrackd", "-C", ctConf, "-s")
		return err
	}, "conntrackd", "-C", ctConf)
	n.start(t, "keepalived", func() error {
		_, err := os.Stat(filepath.Join(n.dir, "vrrp.pid"))
		return err
	}, "keepalived", "-f", filepath.Join(n.dir, "keepalived.conf"), "-n", "-l", "-D", "-G", "-P", "-R",
		"-i", n.name, "-p", filepath.Join(n.dir, "keepalived.pid"), "-r", filepath.Join(n.dir, "vrrp.pid"))
}

// crash kills the node hard, as a power loss would: its links go down,
// then keepalived's VRRP child and parent, conntrackd and fwdd are killed
// by PID with SIGKILL. Its kernel state is then wiped as a reboot would
// (fwdd's table, conntrack, lock and state files), so that a restart
// starts from nothing.
func (n *haNode) crash(t *testing.T) {
	t.Helper()
	run(t, n.host, "sh", "-c", "ip link set eth0 down && ip link set eth1 down && ip link set eth2 down")
	b, err := os.ReadFile(filepath.Join(n.dir, "vrrp.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var vrrp int
	if _, err := fmt.Sscan(string(b), &vrrp); err != nil || vrrp <= 1 {
		t.Fatalf("vrrp.pid: %q", b)
	}
	if err := syscall.Kill(vrrp, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"keepalived", "conntrackd", "fwdd"} {
		if err := n.procs[name].Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill %s: %v", name, err)
		}
	}
	for _, name := range []string{"keepalived", "conntrackd", "fwdd"} {
		<-n.procs[name].Done()
	}
	_ = sandbox.Eventually(5*time.Second, func() error { // the VRRP child was ours too
		if syscall.Kill(vrrp, 0) == nil {
			return errors.New("vrrp child still there")
		}
		return nil
	})
	run(t, n.host, "nft", "delete", "table", "inet", "fwdd")
	run(t, n.host, "conntrack", "-F")
	os.RemoveAll(n.stateDir)
	os.Remove(filepath.Join(n.dir, "conntrackd.lock"))
	os.Remove(filepath.Join(n.dir, "conntrackd.ctl"))
}

func (n *haNode) linksUp(t *testing.T) {
	t.Helper()
	for _, l := range []string{"eth0", "eth1", "eth2"} {
		run(t, n.host, "ip", "link", "set", l, "up")
	}
}

// holdsVIP reports whether the node has the client-side VIP.
func (n *haNode) holdsVIP(t *testing.T) bool {
	t.Helper()
	return strings.Contains(run(t, n.host, "ip", "-4", "addr", "show", "dev", "eth0"), "203.0.113.10/")
}

func (n *haNode) waitMaster(t *testing.T, timeout time.Duration) {
	t.Helper()
	if err := sandbox.Eventually(timeout, func() error {
		if !n.holdsVIP(t) {
			return errors.New("no VIP")
		}
		return nil
	}); err != nil {
		t.Fatalf("%s did not become master: %v\n%s", n.name, err, n.procs["keepalived"].Output())
	}
}

// watchVIP polls n every 10 ms and sends the time it first holds the VIP.
func watchVIP(t *testing.T, n *haNode) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			out, err := n.host.Run(context.Background(), "ip", "-4", "addr", "show", "dev", "eth0")
			if err == nil && strings.Contains(string(out), "203.0.113.10/") {
				ch <- time.Now()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		ch <- deadline
	}()
	return ch
}

// probe is one new connection attempt.
type probe struct {
	start, end time.Time
	err        error
}

// prober opens a new connection from h to addr every 50 ms, each with its
// own 3 s deadline, until stopped.
type prober struct {
	mu     sync.Mutex
	probes []probe
	errs   []string // the first few errors
	stop   chan struct{}
	wg     sync.WaitGroup
}

func startProber(h *sandbox.Host, addr string) *prober {
	p := &prober{stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				pr := probe{start: time.Now()}
				c, _, err := h.DialTCP(ctx, addr)
				if err == nil {
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}
				pr.end, pr.err = time.Now(), err
				p.mu.Lock()
				p.probes = append(p.probes, pr)
				if err != nil && len(p.errs) < 5 {
					p.errs = append(p.errs, fmt.Sprintf("%s: %v", pr.start.Format("15:04:05.000"), err))
				}
				p.mu.Unlock()
			}()
		}
	}()
	return p
}

func (p *prober) errors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.errs)
}

func (p *prober) end() {
	close(p.stop)
	p.wg.Wait()
}

// promptly is how long a new connection may take to count as working (a
// lost SYN is retransmitted after 1 s).
const promptly = 500 * time.Millisecond

// after summarises the attempts started after t: the outage (from the
// start of the first attempt that did not succeed promptly to the start of
// the next one that did), how many failed, how many were slow, of all.
func (p *prober) after(t time.Time) (outage time.Duration, failed, slow, total int) {
	p.mu.Lock()
	probes := slices.Clone(p.probes)
	p.mu.Unlock()
	slices.SortFunc(probes, func(a, b probe) int { return a.start.Compare(b.start) })
	var down time.Time
	for _, pr := range probes {
		if pr.start.Before(t) {
			continue
		}
		total++
		ok := pr.err == nil && pr.end.Sub(pr.start) <= promptly
		switch {
		case pr.err != nil:
			failed++
		case !ok:
			slow++
		}
		if !ok && down.IsZero() {
			down = pr.start
		}
		if ok && !down.IsZero() && pr.start.Sub(down) > outage {
			outage = pr.start.Sub(down)
			down = time.Time{}
		}
	}
	if !down.IsZero() {
		outage = -1 // never recovered
	}
	return outage, failed, slow, total
}

// The HA pair of deploy/ha, run as shipped: a client LAN and a backend LAN
// (bridges), two gateways each with fwdd (the same file), conntrackd (FTFW
// on a dedicated link) and keepalived (VRRPv3, advert_int 0.1, both VIPs in
// one instance, fwdd health as track script). The master is killed hard;
// then it comes back and takes over again.
func TestKernelHA(t *testing.T) {
	for _, bin := range []string{"keepalived", "conntrackd", "conntrack", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is missing (.ci/run installs it): %v", bin, err)
		}
	}
	topo := sandbox.New(t, sandbox.Options{Bare: true})
	add := func(name string) *sandbox.Host {
		h, err := topo.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	client, backend := add("client"), add("backend")
	gws := []*sandbox.Host{add("gw1"), add("gw2")}
	for _, lan := range []struct {
		h    *sandbox.Host
		addr string
	}{{client, "203.0.113.2/24"}, {backend, "10.0.0.2/24"}} {
		run(t, lan.h, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
		run(t, lan.h, "ip", "addr", "add", lan.addr, "dev", "br0")
		run(t, lan.h, "ip", "link", "set", "br0", "up")
	}
	for i, gw := range gws {
		n := i + 1
		for _, l := range []struct {
			lan        *sandbox.Host
			gwIf, port string
			addr       string
		}{
			{client, "eth0", fmt.Sprintf("c-gw%d", n), fmt.Sprintf("203.0.113.1%d/24", n)},
			{backend, "eth1", fmt.Sprintf("b-gw%d", n), fmt.Sprintf("10.0.0.1%d/24", n)},
		} {
			if err := topo.Connect(gw, l.gwIf, l.lan, l.port); err != nil {
				t.Fatal(err)
			}
			run(t, l.lan, "ip", "link", "set", l.port, "master", "br0")
			run(t, gw, "ip", "addr", "add", l.addr, "dev", l.gwIf)
		}
	}
	if err := topo.Connect(gws[0], "eth2", gws[1], "eth2"); err != nil {
		t.Fatal(err)
	}
	run(t, gws[0], "ip", "addr", "add", "192.168.100.1/24", "dev", "eth2")
	run(t, gws[1], "ip", "addr", "add", "192.168.100.2/24", "dev", "eth2")

	serveDownload(t, backend, "10.0.0.2:8080")
	if _, err := backend.ListenTCP("10.0.0.2:5000"); err != nil {
		t.Fatal(err)
	}
	// The track script runs fwdd health every second. Built with -race it
	// took over keepalived's 5 s timeout on two overloaded cores, which
	// failed healthy nodes over: it runs a plain build (the daemons still
	// run the race build).
	health := filepath.Join(t.TempDir(), "fwdd")
	if out, err := exec.Command("go", "build", "-o", health, "../cmd/fwdd").CombinedOutput(); err != nil {
		t.Fatalf("build fwdd: %v\n%s", err, out)
	}
	gw1, gw2 := newHANode(t, gws[0], "gw1", health), newHANode(t, gws[1], "gw2", health)
	gw1.up(t)
	gw1.waitMaster(t, 20*time.Second)
	gw2.up(t)
	time.Sleep(time.Second) // gw2 settles as backup
	if gw2.holdsVIP(t) {
		t.Fatal("gw2 holds the VIP while gw1 is master")
	}

	dl, dlAddr := download(t, client, "203.0.113.10:80")
	ec, ecAddr := echo(t, client, "203.0.113.10:5000")
	probes := startProber(client, "203.0.113.10:5000")
	var probesOnce sync.Once
	endProbes := func() { probesOnce.Do(probes.end) }
	defer endProbes()
	time.Sleep(time.Second)
	if dl.count() == 0 || ec.count() == 0 {
		t.Fatalf("no traffic through the master: download %d, echo %d steps", dl.count(), ec.count())
	}

	// Failover.
	moved := watchVIP(t, gw2)
	killed := time.Now()
	gw1.crash(t)
	gw2.waitMaster(t, 5*time.Second)
	vipMoved := (<-moved).Sub(killed)
	time.Sleep(3 * time.Second)
	for _, s := range []*stream{dl, ec} {
		if err := s.failed(); err != nil {
			t.Fatalf("failover broke a stream: %v\ngw2 keepalived:\n%s", err, gw2.procs["keepalived"].Output())
		}
	}
	outage, failed, slow, total := probes.after(killed)
	t.Logf("failover: VIP on gw2 %v after the links-down command began; new connections out for %v (of %d attempts, one every 50 ms, %d failed, %d took over %v); longest stall: download %v, echo %v",
		vipMoved.Round(time.Millisecond), outage.Round(time.Millisecond), total, failed, slow, promptly,
		dl.maxGap(killed, time.Now()).Round(time.Millisecond), ec.maxGap(killed, time.Now()).Round(time.Millisecond))
	// The requirement is 1 s (measured ~0.3 s); the margin is for two
	// loaded cores, where keepalived's 0.1 s adverts run late.
	if outage < 0 || outage > 1500*time.Millisecond {
		t.Errorf("new connections out for %v (-1: never back) when the master died, want back within 1s (1.5s with a margin for a loaded machine)", outage)
	}
	if failed > 0 {
		t.Errorf("%d of %d new connections failed during failover: %v", failed, total, probes.errors())
	}

	// The synced connections are attributed to their forwards on gw2.
	ids, err := nft.AssignIDs(mustLoad(t, gw2.cfgPath))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ forward, client string }{{"web", dlAddr}, {"app", ecAddr}} {
		_, port, _ := net.SplitHostPort(c.client)
		out := run(t, gw2.host, "conntrack", "-L", "-p", "tcp", "--sport", port)
		want := fmt.Sprintf("mark=%d ", ctmark.Default.ForID(ids[c.forward]))
		if !strings.Contains(out, want) {
			t.Errorf("gw2: connection from %s: conntrack entry without %q (forward %s):\n%s", c.client, want, c.forward, out)
		}
	}
	out, err := gw2.host.Run(ctxT(t), fwddBin, "status", "--json", "-c", gw2.cfgPath)
	if err != nil {
		t.Fatalf("fwdd status on gw2: %v\n%s", err, out)
	}
	var st statusJSON
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	for _, f := range st.Forwards {
		if f.Name == "web" && f.Connections != 1 {
			t.Errorf("fwdd status on gw2: web has %d connections, want 1 (the synced download)", f.Connections)
		}
	}

	// Failback: gw1 comes back from nothing and preempts.
	back := time.Now()
	gw1.linksUp(t)
	gw1.up(t)
	gw1.waitMaster(t, 20*time.Second)
	tookOver := time.Now()
	if err := sandbox.Eventually(5*time.Second, func() error {
		if gw2.holdsVIP(t) {
			return errors.New("gw2 still holds the VIP")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	_, failedBack, slowBack, totalBack := probes.after(back)
	dlBack, ecBack := dl.maxGap(tookOver.Add(-time.Second), time.Now()), ec.maxGap(tookOver.Add(-time.Second), time.Now())
	endProbes()
	for _, s := range []*stream{dl, ec} {
		if err := s.end(); err != nil {
			t.Errorf("failback broke a stream: %v\ngw1 keepalived:\n%s", err, gw1.procs["keepalived"].Output())
		}
	}
	t.Logf("failback: gw1 master %v after its restart began; of %d new connections %d failed, %d took over %v; longest stall: download %v, echo %v; %d download and %d echo steps in all",
		tookOver.Sub(back).Round(time.Millisecond), totalBack, failedBack, slowBack, promptly, dlBack.Round(time.Millisecond), ecBack.Round(time.Millisecond), dl.count(), ec.count())
	if failedBack > 0 {
		t.Errorf("%d of %d new connections failed during failback: %v", failedBack, totalBack, probes.errors())
	}
}

func mustLoad(t *testing.T, path string) *config.Config {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
