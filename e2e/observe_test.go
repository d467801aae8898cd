package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

const observeConfig = `
[daemon]
metrics = "127.0.0.1:9641"

[conntrack]
warn_percent = 1
critical_percent = 99

[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"
log = true

[[forward]]
name = "dgram"
proto = "udp"
port = 53
to = "10.22.0.2:5353"

[[forward]]
name = "quiet"
port = 81
to = "10.22.0.2:8080"
`

type statusJSON struct {
	Table struct {
		Present       bool `json:"present"`
		MatchesConfig bool `json:"matches_config"`
	} `json:"table"`
	IPForward bool `json:"ip_forward"`
	Conntrack struct {
		Count int `json:"count"`
		Max   int `json:"max"`
	} `json:"conntrack"`
	Forwards []struct {
		Name            string `json:"name"`
		Packets         uint64 `json:"packets"`
		Bytes           uint64 `json:"bytes"`
		PacketsOriginal uint64 `json:"packets_original"`
		PacketsReply    uint64 `json:"packets_reply"`
		BytesOriginal   uint64 `json:"bytes_original"`
		BytesReply      uint64 `json:"bytes_reply"`
		Connections     int    `json:"connections"`
		Established     int    `json:"established"`
		NewConnections  uint64 `json:"new_connections"`
	} `json:"forwards"`
}

func readStatus(t *testing.T, topo *sandbox.Topology, cfgPath string) statusJSON {
	t.Helper()
	out, err := fwdd(t, topo, "status", "--json", "-c", cfgPath)
	if err != nil {
		t.Fatalf("fwdd status: %v\n%s", err, out)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func forwardStatus(st statusJSON, name string) (packetsOrig, packetsReply, bytesOrig, bytesReply uint64, conns int) {
	for _, f := range st.Forwards {
		if f.Name == name {
			return f.PacketsOriginal, f.PacketsReply, f.BytesOriginal, f.BytesReply, f.Connections
		}
	}
	return
}

// scrape fetches /metrics from inside the gateway namespace: the socket is
// made there, then used from this goroutine.
func scrape(t *testing.T, topo *sandbox.Topology) string {
	t.Helper()
	var c net.Conn
	if err := topo.Gateway.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", "127.0.0.1:9641", 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial metrics: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics: %v %d", err, resp.StatusCode)
	}
	return string(b)
}

func TestKernelObserve(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	// The flows of this test live until it ends: with the default 30 s UDP
	// timeouts the entries of the pressure and burst subtests would expire
	// while a loaded machine is still counting them, and two counts read a
	// moment apart would differ by what expired in between.
	for _, k := range []string{"net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"} {
		if err := topo.Gateway.SetSysctl(k, "600"); err != nil {
			t.Fatal(err)
		}
	}
	listenTCP(t, topo.Backend, "10.22.0.2:8080")
	listenUDP(t, topo.Backend, "10.22.0.2:5353")
	d := startFwdd(t, topo, observeConfig)

	// Exact counts: k datagrams of one UDP flow, each answered once.
	const k = 7
	var wantOrigBytes, wantReplyBytes uint64
	for i := 0; i < k; i++ {
		payload := strings.Repeat("x", 10+i)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		reply, err := topo.Client.AskUDP(ctx, "10.11.0.1:53", []byte(payload), sandbox.FromPort(40000))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		wantOrigBytes += uint64(20 + 8 + len(payload)) // IPv4 + UDP headers
		wantReplyBytes += uint64(20 + 8 + len(reply))
	}
	// Held TCP connections: the live count is exact.
	const n = 5
	for i := 0; i < n; i++ {
		c, _, err := topo.Client.DialTCP(ctxT(t), "10.11.0.1:80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}

	t.Run("status counts", func(t *testing.T) {
		st := readStatus(t, topo, d.cfgPath)
		if !st.Table.Present || !st.Table.MatchesConfig || !st.IPForward {
			t.Errorf("status: table present %v, matches %v, ip_forward %v", st.Table.Present, st.Table.MatchesConfig, st.IPForward)
		}
		po, pr, bo, br, conns := forwardStatus(st, "dgram")
		if po != k || pr != k || bo != wantOrigBytes || br != wantReplyBytes || conns != 1 {
			t.Errorf("dgram: packets %d/%d bytes %d/%d conns %d; want %d/%d, %d/%d, 1", po, pr, bo, br, conns, k, k, wantOrigBytes, wantReplyBytes)
		}
		if _, _, _, _, conns := forwardStatus(st, "web"); conns != n {
			t.Errorf("web: %d live connections, want %d", conns, n)
		}
		// New connections are counted by the kernel, once each.
		for _, f := range st.Forwards {
			want := map[string]uint64{"web": n, "dgram": 1, "quiet": 0}[f.Name]
			if f.NewConnections != want {
				t.Errorf("%s: %d new connections, want %d", f.Name, f.NewConnections, want)
			}
			if f.Name == "web" && f.Established != n {
				t.Errorf("web: %d established, want %d", f.Established, n)
			}
		}
		// Status of one forward reads only that forward.
		out, err := fwdd(t, topo, "status", "-c", d.cfgPath, "web")
		if err != nil || !strings.Contains(out, "web ") || strings.Contains(out, "dgram") {
			t.Errorf("fwdd status web: %v\n%s", err, out)
		}
		if po, _, _, _, conns := forwardStatus(st, "quiet"); po != 0 || conns != 0 {
			t.Errorf("quiet: %d packets, %d connections; want none", po, conns)
		}
		if st.Conntrack.Max == 0 || st.Conntrack.Count < n+1 {
			t.Errorf("conntrack: %+v", st.Conntrack)
		}
	})

	t.Run("conntrack lists fwdd's connections by mark", func(t *testing.T) {
		// The README's recipe.
		out, err := topo.Gateway.Run(ctxT(t), "conntrack", "-L", "-m", "0xfd000000/0xff000000")
		if err != nil {
			t.Fatalf("conntrack -L: %v\n%s", err, out)
		}
		if got := strings.Count(string(out), "dport=80 "); got < n {
			t.Errorf("conntrack -L -m lists %d connections to port 80, want %d:\n%s", got, n, out)
		}
	})

	t.Run("connection log", func(t *testing.T) {
		out := d.proc.Output()
		if got := strings.Count(out, `"forward": "web"`); got < n {
			t.Errorf("%d connection log lines for web, want %d:\n%s", got, n, out)
		}
		mustGreet(t, topo.Client, "10.11.0.1:81", "backend")
		time.Sleep(300 * time.Millisecond)
		if strings.Contains(d.proc.Output(), `"forward": "quiet"`) || strings.Contains(d.proc.Output(), `"forward": "dgram"`) {
			t.Errorf("connections of a forward with log = false were logged:\n%s", d.proc.Output())
		}
	})

	t.Run("metrics", func(t *testing.T) {
		var body string
		if err := sandbox.Eventually(10*time.Second, func() error {
			body = scrape(t, topo)
			if !strings.Contains(body, fmt.Sprintf(`fwdd_forward_connections{forward="web"} %d`, n)) {
				return fmt.Errorf("web connections not %d yet", n)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v\n%s", err, body)
		}
		for _, want := range []string{
			fmt.Sprintf(`fwdd_forward_packets_total{direction="original",forward="dgram"} %d`, k),
			`fwdd_forward_new_connections_total{forward="dgram"} 1`,
			fmt.Sprintf(`fwdd_forward_connections_established{forward="web"} %d`, n),
			`fwdd_packets_total{direction="original"} `,
			`fwdd_forwards_exported 3`,
			fmt.Sprintf(`fwdd_forward_bytes_total{direction="reply",forward="dgram"} %d`, wantReplyBytes),
			`fwdd_reloads_total{result="success"} 0`,
			`fwdd_conntrack_entries_limit `,
			`fwdd_last_reload_success_timestamp_seconds `,
			`fwdd_apply_duration_seconds_count 1`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})

	t.Run("counters survive a reload of another forward", func(t *testing.T) {
		changed := strings.Replace(observeConfig, `port = 81
to = "10.22.0.2:8080"`, `port = 82
to = "10.22.0.2:8080"`, 1)
		if out, err := d.reload(changed); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
		st := readStatus(t, topo, d.cfgPath)
		po, pr, _, _, _ := forwardStatus(st, "dgram")
		if po != k || pr != k {
			t.Errorf("dgram counters after reloading another forward: %d/%d, want %d/%d", po, pr, k, k)
		}
		if body := scrape(t, topo); !strings.Contains(body, `fwdd_reloads_total{result="success"} 1`) {
			t.Errorf("reload not counted in metrics")
		}
	})

	t.Run("conntrack pressure warning", func(t *testing.T) {
		// warn_percent = 1: 1% of nf_conntrack_max entries crosses it.
		st := readStatus(t, topo, d.cfgPath)
		need := st.Conntrack.Max/100 + 50 - st.Conntrack.Count
		for i := 0; i < need; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := topo.Client.AskUDP(ctx, "10.11.0.1:53", []byte("p"), sandbox.FromPort(20000+i))
			cancel()
			if err != nil {
				t.Fatalf("flow %d: %v", i, err)
			}
		}
		if err := sandbox.Eventually(20*time.Second, func() error {
			if !strings.Contains(d.proc.Output(), "WARN") || !strings.Contains(d.proc.Output(), "conntrack") {
				return fmt.Errorf("no warning yet")
			}
			return nil
		}); err != nil {
			t.Fatalf("no conntrack warning logged after %d flows:\n%s", need, d.proc.Output())
		}
		if !strings.Contains(d.proc.Output(), "dgram") {
			t.Errorf("the warning does not name the forward holding the entries")
		}
	})

	t.Run("burst of 20,000 flows: metrics and status count the same", func(t *testing.T) {
		// Fire-and-forget datagrams from 20,000 source ports, as fast as
		// the client can send them: more events than the watcher's socket
		// holds at once on a busy machine.
		if err := topo.Client.Do(func() error {
			dst := &net.UDPAddr{IP: net.ParseIP("10.11.0.1"), Port: 53}
			for i := 0; i < 20_000; i++ {
				c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.11.0.2"), Port: 30000 + i})
				if err != nil {
					return err
				}
				_, err = c.WriteToUDP([]byte("b"), dst)
				c.Close()
				if err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// No entry expires during the test (see the timeouts above), so
		// once the last datagram is through, the count holds still and
		// both views must show the same number.
		var watched, dumped int
		if err := sandbox.Eventually(60*time.Second, func() error {
			_, _, _, _, dumped = forwardStatus(readStatus(t, topo, d.cfgPath), "dgram")
			body := scrape(t, topo)
			watched = -1
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, `fwdd_forward_connections{forward="dgram"} `) {
					fmt.Sscan(strings.Fields(l)[1], &watched)
				}
			}
			if watched != dumped {
				return fmt.Errorf("metrics count %d, status %d", watched, dumped)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("dgram: %d live flows, metrics and status agree; %s", dumped, metricLine(scrape(t, topo), "fwdd_conntrack_event_overflows_total"))
		if dumped < 5_000 { // the kernel may drop part of a burst on a busy machine
			t.Errorf("only %d flows tracked: not much of a burst", dumped)
		}
	})
}

func metricLine(body, name string) string {
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return l
		}
	}
	return name + " absent"
}
