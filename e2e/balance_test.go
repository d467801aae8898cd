package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// Balancing tests: the backend host has the addresses 10.22.0.2, .3 and .4
// (sandbox.Options.BackendAddrs), each standing for one backend.

var balanceBackends = []string{"10.22.0.2", "10.22.0.3", "10.22.0.4"}

func balanceTopo(t *testing.T) *sandbox.Topology {
	return sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true, BackendAddrs: 2})
}

// connectMany makes n TCP connections from h to addr (each reads the echo
// server's greeting) and counts them per backend server.
func connectMany(t *testing.T, h *sandbox.Host, addr string, n int, servers map[string]*sandbox.TCPServer, opts ...sandbox.DialOption) map[string]int {
	t.Helper()
	before := map[string]int{}
	for a, s := range servers {
		before[a] = len(s.Peers())
	}
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := h.DialTCP(ctx, addr, opts...)
		cancel()
		if err != nil {
			t.Fatalf("connection %d of %d to %s: %v", i+1, n, addr, err)
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	got := map[string]int{}
	for a, s := range servers {
		if d := len(s.Peers()) - before[a]; d > 0 {
			got[a] = d
		}
	}
	return got
}

// share checks that backend a got want (0..1) of n connections, give or
// take 5 points: over 3,000 connections that is more than 5 standard
// deviations of a fair draw, so the test fails only when the split is wrong.
func share(t *testing.T, what string, got map[string]int, a string, want float64, n int) {
	t.Helper()
	if s := float64(got[a]) / float64(n); s < want-0.05 || s > want+0.05 {
		t.Errorf("%s: %s got %d of %d connections (%.1f %%), want %.1f %% +-5", what, a, got[a], n, 100*s, 100*want)
	}
}

func tcpServers(t *testing.T, h *sandbox.Host, port int) map[string]*sandbox.TCPServer {
	t.Helper()
	out := map[string]*sandbox.TCPServer{}
	for _, a := range balanceBackends {
		out[a] = listenTCP(t, h, fmt.Sprintf("%s:%d", a, port))
	}
	return out
}

const balanceConfig = `
[[forward]]
name = "web"
port = 80
to = ["10.22.0.2:8080", "10.22.0.3:8080", "10.22.0.4:8080"]

[[forward]]
name = "api"
port = 82
[[forward.backend]]
to = "10.22.0.2:8080"
weight = 3
[[forward.backend]]
to = "10.22.0.3:8080"

[[forward]]
name = "sticky"
port = 81
balance = "source"
to = ["10.22.0.2:8080", "10.22.0.3:8080", "10.22.0.4:8080"]
`

// TestKernelBalanceSpread: random over 3 backends, weights 3:1, and source
// affinity, with real connections.
func TestKernelBalanceSpread(t *testing.T) {
	topo := balanceTopo(t)
	servers := tcpServers(t, topo.Backend, 8080)
	var clients []netip.Addr
	for i := range 20 {
		a := netip.AddrFrom4([4]byte{10, 11, 0, byte(100 + i)})
		if _, err := topo.Client.Run(ctxT(t), "ip", "addr", "add", a.String()+"/24", "dev", sandbox.LeafIface); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, a)
	}
	startFwdd(t, topo, balanceConfig)

	const n = 3000
	got := connectMany(t, topo.Client, "10.11.0.1:80", n, servers)
	t.Logf("random over 3 backends, %d connections: %v", n, got)
	for _, a := range balanceBackends {
		share(t, "random", got, a, 1.0/3, n)
	}

	got = connectMany(t, topo.Client, "10.11.0.1:82", n, servers)
	t.Logf("weights 3:1, %d connections: %v", n, got)
	share(t, "weights 3:1", got, "10.22.0.2", 0.75, n)
	share(t, "weights 3:1", got, "10.22.0.3", 0.25, n)
	if got["10.22.0.4"] != 0 {
		t.Errorf("weights 3:1: 10.22.0.4, not a backend of api, got %d", got["10.22.0.4"])
	}

	used := map[string]bool{}
	for _, cl := range clients {
		got := connectMany(t, topo.Client, "10.11.0.1:81", 10, servers, sandbox.FromIP(cl))
		if len(got) != 1 {
			t.Errorf("source: client %s went to %v, want always the same backend", cl, got)
		}
		for a := range got {
			used[a] = true
		}
	}
	t.Logf("source: 20 clients used backends %v", used)
	if len(used) < 2 {
		t.Errorf("source: 20 clients all went to %v, want them spread", used)
	}
}

// httpBackend is an HTTP server in the backend namespace: GET /health
// answers with Health (default 200), anything else 200 with its address.
type httpBackend struct {
	addr   string
	health atomic.Int32
	ln     net.Listener
	srv    *http.Server
}

func startHTTPBackend(t *testing.T, h *sandbox.Host, addr string) *httpBackend {
	t.Helper()
	b := &httpBackend{addr: addr}
	b.health.Store(200)
	if err := h.Do(func() error {
		var err error
		b.ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.WriteHeader(int(b.health.Load()))
			return
		}
		fmt.Fprint(w, addr)
	})}
	go b.srv.Serve(b.ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// get asks addr for / from h and returns the body (the backend's address).
func get(h *sandbox.Host, addr string) (string, error) {
	var c net.Conn
	if err := h.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	resp := string(b)
	if !strings.HasPrefix(resp, "HTTP/1.0 200") && !strings.HasPrefix(resp, "HTTP/1.1 200") {
		return "", fmt.Errorf("response %q", resp)
	}
	_, body, _ := strings.Cut(resp, "\r\n\r\n")
	return body, nil
}

// getMany makes n requests and counts the answers per backend; every
// request must succeed.
func getMany(t *testing.T, h *sandbox.Host, addr string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := range n {
		body, err := get(h, addr)
		if err != nil {
			t.Fatalf("request %d of %d to %s: %v", i+1, n, addr, err)
		}
		host, _, _ := strings.Cut(body, ":")
		out[host]++
	}
	return out
}

const healthConfig = `
[daemon]
metrics = "127.0.0.1:9641"

[[forward]]
name = "web"
port = 80
to = ["10.22.0.2:8080", "10.22.0.3:8080", "10.22.0.4:8080"]
health = { check = "tcp", interval = "500ms", timeout = "300ms", fall = 2, rise = 2 }

[[forward]]
name = "app"
port = 81
to = ["10.22.0.2:8081", "10.22.0.3:8081", "10.22.0.4:8081"]
health = { check = "http", path = "/health", interval = "500ms", timeout = "300ms", fall = 2, rise = 2 }
`

// TestKernelHealthTCP: a backend whose server dies gets no new connection
// within interval x fall + 1 s and none fails after that; started again it
// is back after rise checks.
func TestKernelHealthTCP(t *testing.T) {
	topo := balanceTopo(t)
	servers := tcpServers(t, topo.Backend, 8080)
	for _, a := range balanceBackends {
		startHTTPBackend(t, topo.Backend, a+":8081")
	}
	d := startFwdd(t, topo, healthConfig)

	got := connectMany(t, topo.Client, "10.11.0.1:80", 300, servers)
	if len(got) != 3 {
		t.Fatalf("before: connections went to %v, want all 3 backends", got)
	}
	servers["10.22.0.3"].Close()
	killed := time.Now()
	// interval x fall + 1 s = 2 s; from then on no connection may fail.
	time.Sleep(time.Until(killed.Add(2 * time.Second)))
	got = connectMany(t, topo.Client, "10.11.0.1:80", 300, servers)
	t.Logf("after the kill: %v", got)
	if got["10.22.0.3"] != 0 || got["10.22.0.2"] == 0 || got["10.22.0.4"] == 0 {
		t.Errorf("after the kill: %v, want only 10.22.0.2 and 10.22.0.4", got)
	}
	out := d.proc.Output()
	if !strings.Contains(out, "backend down") || !strings.Contains(out, `"reason": "refused"`) {
		t.Errorf("no 'backend down' line with reason refused:\n%s", out)
	}
	checkBackendStatus(t, topo, d)
	m := scrape(t, topo)
	for _, want := range []string{
		`fwdd_backend_up{backend="10.22.0.3:8080",forward="web"} 0`,
		`fwdd_backend_up{backend="10.22.0.2:8080",forward="web"} 1`,
		`fwdd_backend_health_changes_total{backend="10.22.0.3:8080",forward="web"} 1`,
		`fwdd_backend_connections{backend="10.22.0.2:8080",forward="web"}`,
		`fwdd_backend_established_connections{backend="10.22.0.2:8080",forward="web"}`,
		`fwdd_backend_live_packets{backend="10.22.0.2:8080",forward="web"}`,
		`fwdd_backend_live_bytes{backend="10.22.0.4:8080",forward="web"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	servers["10.22.0.3"] = listenTCP(t, topo.Backend, "10.22.0.3:8080")
	back := time.Now()
	if err := sandbox.Eventually(2*time.Second+500*time.Millisecond, func() error {
		if g := connectMany(t, topo.Client, "10.11.0.1:80", 30, servers); g["10.22.0.3"] == 0 {
			return fmt.Errorf("10.22.0.3 gets no connections: %v", g)
		}
		return nil
	}); err != nil {
		t.Fatalf("restarted backend: %v\n%s", err, d.proc.Output())
	}
	t.Logf("the restarted backend gets connections again %v after its restart", time.Since(back).Round(time.Millisecond))
}

// checkBackendStatus: with 10.22.0.3 down, `fwdd status` shows each
// backend of "web" with its health and last check from the daemon, and
// the live connections held open meanwhile with their traffic.
func checkBackendStatus(t *testing.T, topo *sandbox.Topology, d *daemon) {
	t.Helper()
	const held = 6
	for range held {
		c, _, err := topo.Client.DialTCP(ctxT(t), "10.11.0.1:80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := sandbox.Echo(c, "ping"); err != nil {
			t.Fatal(err)
		}
	}
	type backend struct {
		Address, Health, Reason  string
		Connections, Established int
		Packets, Bytes           uint64
	}
	var st struct {
		Forwards []struct {
			Name     string
			Backends []backend
		}
	}
	var web []backend
	if err := sandbox.Eventually(3*time.Second, func() error {
		out, err := fwdd(t, topo, "status", "--json", "-c", d.cfgPath, "--state-dir", d.stateDir, "web")
		if err != nil {
			return fmt.Errorf("fwdd status: %v\n%s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if len(st.Forwards) != 1 || len(st.Forwards[0].Backends) != 3 {
			return fmt.Errorf("status of web: %s", out)
		}
		web = st.Forwards[0].Backends
		if web[1].Health != "down" {
			return fmt.Errorf("10.22.0.3 is %q, want down: %s", web[1].Health, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("status of web's backends: %+v", web)
	conns := 0
	for i, b := range web {
		want := backend{Address: balanceBackends[i] + ":8080", Health: "up", Reason: "connected"}
		if i == 1 {
			want.Health, want.Reason = "down", "refused"
		}
		if b.Address != want.Address || b.Health != want.Health || b.Reason != want.Reason {
			t.Errorf("backend %d: %+v, want %s %s (last check %s)", i, b, want.Address, want.Health, want.Reason)
		}
		if b.Established > 0 && (b.Packets < 6 || b.Bytes == 0) {
			t.Errorf("backend %s: %d open connections but %d packets, %d bytes", b.Address, b.Established, b.Packets, b.Bytes)
		}
		conns += b.Established
	}
	if conns < held || web[1].Established != 0 {
		t.Errorf("open connections per backend: %+v, want %d on 10.22.0.2 and 10.22.0.4", web, held)
	}
	out, err := fwdd(t, topo, "status", "-c", d.cfgPath, "--state-dir", d.stateDir)
	if err != nil || !strings.Contains(out, "BACKEND") || !strings.Contains(out, "refused since") {
		t.Errorf("fwdd status: %v, want a backend table with the last check:\n%s", err, out)
	}
	// A backend the daemon took out is no table that differs: keepalived's
	// track_script must not fail the node over for it.
	if out, err := fwdd(t, topo, "health", "-c", d.cfgPath, "--state-dir", d.stateDir); err != nil {
		t.Errorf("fwdd health with a backend down: %v\n%s", err, out)
	}
	// Nor is it a difference fwdd diff reports: a reload of the same file
	// sends nothing.
	if out, code := diffExit(t, topo, d); code != 0 || !strings.Contains(out, "no difference") {
		t.Errorf("fwdd diff of the file in force with a backend down: exit %d, want 0\n%s", code, out)
	}
}

// TestKernelHealthHTTP: a backend that answers 500 is taken out; all down
// is fail open (every backend gets connections, an error is logged).
func TestKernelHealthHTTP(t *testing.T) {
	topo := balanceTopo(t)
	tcpServers(t, topo.Backend, 8080)
	var hb []*httpBackend
	for _, a := range balanceBackends {
		hb = append(hb, startHTTPBackend(t, topo.Backend, a+":8081"))
	}
	d := startFwdd(t, topo, healthConfig)

	hb[0].health.Store(500)
	if err := sandbox.Eventually(5*time.Second, func() error {
		if !strings.Contains(d.proc.Output(), `"reason": "http status 500"`) {
			return fmt.Errorf("no backend down with http status 500")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.proc.Output())
	}
	got := getMany(t, topo.Client, "10.11.0.1:81", 100)
	if got["10.22.0.2"] != 0 || len(got) != 2 {
		t.Errorf("with 10.22.0.2 answering 500: %v, want only the other two", got)
	}

	for _, b := range hb {
		b.health.Store(503)
	}
	if err := sandbox.Eventually(5*time.Second, func() error {
		if !strings.Contains(d.proc.Output(), "fail open") {
			return fmt.Errorf("no fail-open error logged")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.proc.Output())
	}
	got = getMany(t, topo.Client, "10.11.0.1:81", 150)
	t.Logf("all down, fail open: %v", got)
	if len(got) != 3 {
		t.Errorf("all down: requests went to %v, want all 3 backends (fail open)", got)
	}
}

const udpHealthConfig = `
[[forward]]
name = "dns"
proto = "udp"
port = 53
to = ["10.22.0.2:5353", "10.22.0.3:5353"]
health = { check = "tcp", interval = "300ms", timeout = "200ms", fall = 2, rise = 2 }
`

// TestKernelHealthUDPMoves: a UDP stream whose backend goes down reaches a
// healthy backend within 1 s of the backend being found down (checks of a
// UDP forward connect to the same address and port over TCP).
func TestKernelHealthUDPMoves(t *testing.T) {
	topo := balanceTopo(t)
	be := topo.Backend
	udp := map[string]*sandbox.UDPServer{}
	tcp := map[string]*sandbox.TCPServer{}
	for _, a := range balanceBackends[:2] {
		udp[a] = listenUDP(t, be, a+":5353")
		tcp[a] = listenTCP(t, be, a+":5353")
	}
	d := startFwdd(t, topo, udpHealthConfig)
	s := startUDPStream(t, topo.Client, "10.11.0.1:53")
	var on, other string
	if err := sandbox.Eventually(5*time.Second, func() error {
		for _, a := range balanceBackends[:2] {
			if countFrom(udp[a], s.port()) > 0 {
				on = a
			}
		}
		if on == "" {
			return fmt.Errorf("the stream reaches no backend")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	other = balanceBackends[0]
	if on == other {
		other = balanceBackends[1]
	}
	tcp[on].Close()
	if err := sandbox.Eventually(5*time.Second, func() error {
		if !strings.Contains(d.proc.Output(), "backend down") {
			return fmt.Errorf("backend not found down")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.proc.Output())
	}
	down := time.Now()
	if err := sandbox.Eventually(3*time.Second, func() error {
		if countFrom(udp[other], s.port()) == 0 {
			return fmt.Errorf("the stream has not moved to %s", other)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.proc.Output())
	}
	moved := time.Since(down)
	t.Logf("the UDP stream moved from %s to %s %v after the backend was found down", on, other, moved.Round(time.Millisecond))
	if moved > time.Second {
		t.Errorf("the UDP stream moved after %v, want within 1s", moved)
	}
}

// TestKernelBalanceBadInput: each bad balancing config is refused by
// fwdd check with the file, line and what is allowed.
func TestKernelBalanceBadInput(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	dir := t.TempDir()
	for _, tc := range []struct {
		name, forward, want string
	}{
		{"empty list", `to = []`, "empty"},
		{"mixed families", `to = ["10.22.0.2:80", "[fd22::2]:80"]`, "family"},
		{"weight 0", "[[forward.backend]]\nto = \"10.22.0.2:80\"\nweight = 0", "between 1 and 100"},
		{"weight 101", "[[forward.backend]]\nto = \"10.22.0.2:80\"\nweight = 101", "between 1 and 100"},
		{"list and backend", "to = [\"10.22.0.2:80\"]\n[[forward.backend]]\nto = \"10.22.0.3:80\"", "backend"},
		{"unknown check", `to = ["10.22.0.2:80", "10.22.0.3:80"]` + "\nhealth = { check = \"ping\" }", "check"},
		{"interval below timeout", `to = ["10.22.0.2:80", "10.22.0.3:80"]` + "\nhealth = { check = \"tcp\", interval = \"1s\", timeout = \"2s\" }", "timeout"},
		{"path without http", `to = ["10.22.0.2:80", "10.22.0.3:80"]` + "\nhealth = { check = \"tcp\", path = \"/x\" }", "path"},
		{"unknown balance", `to = ["10.22.0.2:80", "10.22.0.3:80"]` + "\nbalance = \"roundrobin\"", "balance"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := dir + "/" + strings.ReplaceAll(tc.name, " ", "_") + ".toml"
			writeConfig(t, path, "[[forward]]\nname = \"web\"\nport = 80\n"+tc.forward+"\n")
			out, err := fwdd(t, topo, "check", "-c", path)
			if err == nil {
				t.Fatalf("fwdd check accepted it:\n%s", out)
			}
			if !strings.Contains(out, path+":") || !strings.Contains(out, tc.want) {
				t.Errorf("fwdd check said %q; want file:line and %q", out, tc.want)
			}
		})
	}
}

// heldOn opens connections through addr until one is held on each backend
// in servers, and returns them by backend.
func heldOn(t *testing.T, h *sandbox.Host, addr string, servers map[string]*sandbox.TCPServer) map[string]net.Conn {
	t.Helper()
	held := map[string]net.Conn{}
	for i := 0; len(held) < len(servers); i++ {
		if i == 200 {
			t.Fatalf("200 connections held on %d backends only", len(held))
		}
		before := map[string]int{}
		for a, s := range servers {
			before[a] = len(s.Peers())
		}
		c, _, err := h.DialTCP(ctxT(t), addr)
		if err != nil {
			t.Fatal(err)
		}
		for a, s := range servers {
			if len(s.Peers()) > before[a] && held[a] == nil {
				held[a] = c
				c = nil
			}
		}
		if c != nil {
			c.Close()
		}
	}
	for _, c := range held {
		t.Cleanup(func() { c.Close() })
	}
	return held
}

// TestKernelBalanceReload: a reload that changes only the backends and
// weights of a forward sends only its balance elements, the connections
// held to the backends that stay keep flowing, and the new weights hold;
// a reload with bad balancing input is refused with the file's line and
// leaves the kernel byte-identical.
func TestKernelBalanceReload(t *testing.T) {
	topo := balanceTopo(t)
	servers := tcpServers(t, topo.Backend, 8080)
	const base = `
[[forward]]
name = "other"
port = 90
to = "10.22.0.2:8080"

[[forward]]
name = "web"
port = 80
`
	d := startFwdd(t, topo, base+`to = ["10.22.0.2:8080", "10.22.0.3:8080", "10.22.0.4:8080"]`+"\n")
	held := heldOn(t, topo.Client, "10.11.0.1:80", servers)

	if err := d.WriteConfig(base + `
[[forward.backend]]
to = "10.22.0.2:8080"
weight = 3
[[forward.backend]]
to = "10.22.0.3:8080"
`); err != nil {
		t.Fatal(err)
	}
	l, err := d.Reload()
	if err != nil {
		t.Fatal(err)
	}
	// 3 intervals deleted, 2 added: nothing else.
	if l.Fields["fullReplace"] != false || l.Fields["elements"] != float64(5) || fmt.Sprint(l.Fields["changed"]) != "[web]" {
		t.Errorf("reload of web's backends and weights: %s, want 5 elements of web only, no full replace", l.Text)
	}
	for _, a := range []string{"10.22.0.2", "10.22.0.3"} {
		if err := sandbox.Echo(held[a], "still there"); err != nil {
			t.Errorf("connection held to %s, which stayed: %v", a, err)
		}
	}
	const n = 2000
	got := connectMany(t, topo.Client, "10.11.0.1:80", n, servers)
	t.Logf("after the reload, weights 3:1: %v", got)
	share(t, "reloaded weights 3:1", got, "10.22.0.2", 0.75, n)
	share(t, "reloaded weights 3:1", got, "10.22.0.3", 0.25, n)
	if got["10.22.0.4"] != 0 {
		t.Errorf("10.22.0.4 left the forward but got %d new connections", got["10.22.0.4"])
	}

	// -s: without counter values, which any packet changes.
	list := func() string {
		out, err := topo.Gateway.Run(ctxT(t), "nft", "-s", "list", "table", "inet", "fwdd")
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	before := list()
	for _, bad := range []struct{ forward, want string }{
		{`to = []`, "empty"},
		{`to = ["10.22.0.2:8080", "[fd22::2]:8080"]`, "family"},
		{"[[forward.backend]]\nto = \"10.22.0.2:8080\"\nweight = 101", "between 1 and 100"},
		{`to = ["10.22.0.2:8080", "10.22.0.3:8080"]` + "\nhealth = { check = \"http\", interval = \"1s\", timeout = \"2s\" }", "timeout"},
		{`to = ["10.22.0.2:8080", "10.22.0.3:8080"]` + "\nhealth = { check = \"tcp\", path = \"/x\" }", "path"},
	} {
		out, err := d.reload(base + bad.forward + "\n")
		if err == nil || !strings.Contains(out, d.cfgPath+":") || !strings.Contains(out, bad.want) {
			t.Errorf("reload with %q: %v, %q; want it refused naming %s:line and %q", bad.forward, err, out, d.cfgPath, bad.want)
		}
		if after := list(); after != before {
			t.Errorf("reload with %q changed the table:\n%s\nwant\n%s", bad.forward, after, before)
		}
	}
}
