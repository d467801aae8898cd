package metrics

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/nft"
)

func testMetrics() *Metrics {
	return New(testSources(map[string]uint32{"web": 1}))
}

func testSources(ids map[string]uint32) Sources {
	return Sources{
		Forwards: func() map[string]uint32 { return ids },
		Traffic: func(ids map[string]uint32) (map[string]*nft.Traffic, error) {
			out := map[string]*nft.Traffic{}
			for name, id := range ids {
				out[name] = &nft.Traffic{Name: name, ID: id, OrigPackets: 3, OrigBytes: 180, ReplyPackets: 2, ReplyBytes: 120, New: 5}
			}
			return out, nil
		},
		Totals: func() (nft.Totals, error) {
			return nft.Totals{OrigPackets: 30, OrigBytes: 1800, ReplyPackets: 20, ReplyBytes: 1200, New: 50}, nil
		},
		Connections: func() (map[uint32]conntrack.Live, error) {
			return map[uint32]conntrack.Live{1: {Total: 4, Established: 2}, 2: {Total: 1}}, nil
		},
		Overflows: func() uint64 { return 1 },
		Pressure:  func() conntrack.PressureStatus { return conntrack.PressureStatus{Count: 10, Max: 100, Time: nowish} },
	}
}

// exported returns the names of every metric family fwdd serves.
func exported(t *testing.T, m *Metrics) map[string]bool {
	t.Helper()
	m.Applied(false, 1, 5, 0)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		names[f.GetName()] = true
	}
	return names
}

func TestNamesFollowConventions(t *testing.T) {
	for name := range exported(t, testMetrics()) {
		if !strings.HasPrefix(name, "fwdd_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("%s: not under the fwdd_ prefix", name)
		}
	}
	want := []string{"fwdd_forward_packets_total", "fwdd_forward_bytes_total", "fwdd_forward_connections",
		"fwdd_forward_new_connections_total", "fwdd_conntrack_entries", "fwdd_conntrack_entries_limit",
		"fwdd_reloads_total", "fwdd_last_reload_success_timestamp_seconds", "fwdd_apply_duration_seconds",
		"fwdd_conntrack_event_overflows_total", "fwdd_forward_connections_established", "fwdd_packets_total",
		"fwdd_bytes_total", "fwdd_connections", "fwdd_connections_established", "fwdd_new_connections_total",
		"fwdd_forwards_exported"}
	got := exported(t, testMetrics())
	for _, w := range want {
		if !got[w] {
			t.Errorf("metric %s is missing", w)
		}
	}
	// OpenMetrics names a counter's family without _total: a gauge of that
	// name would make a second family of the same name, and the exposition
	// invalid.
	for name := range got {
		if family, ok := strings.CutSuffix(name, "_total"); ok && got[family] && strings.HasPrefix(name, "fwdd_") {
			t.Errorf("%s and %s are one family name in OpenMetrics", family, name)
		}
	}
}

// The shipped dashboard may only use metrics fwdd serves.
func TestDashboardUsesServedMetrics(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana/fwdd-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	served := exported(t, testMetrics())
	re := regexp.MustCompile(`fwdd_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range re.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				if !served[base] {
					t.Errorf("panel %q uses %s, which fwdd does not serve", p.Title, name)
				}
			}
		}
	}
}

var nowish = time.Unix(1_800_000_000, 0)

func scrapeText(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d", rec.Code)
	}
	return rec.Body.String()
}

func TestPerForwardSeriesBounded(t *testing.T) {
	small := scrapeText(t, testMetrics())
	for _, want := range []string{
		`fwdd_forward_packets_total{direction="original",forward="web"} 3`,
		`fwdd_forward_connections{forward="web"} 4`,
		`fwdd_forward_connections_established{forward="web"} 2`,
		`fwdd_forward_new_connections_total{forward="web"} 5`,
		`fwdd_packets_total{direction="reply"} 20`,
		`fwdd_connections 5`,
		`fwdd_connections_established 2`,
		`fwdd_new_connections_total 50`,
		`fwdd_forwards_exported 1`,
	} {
		if !strings.Contains(small, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	many := map[string]uint32{}
	for i := range PerForwardLimit + 1 {
		many[fmt.Sprintf("f%d", i)] = uint32(i + 1)
	}
	src := testSources(many)
	src.Traffic = func(map[string]uint32) (map[string]*nft.Traffic, error) {
		t.Error("per-forward counters read above the limit")
		return nil, nil
	}
	big := scrapeText(t, New(src))
	if strings.Contains(big, `fwdd_forward_`) {
		t.Errorf("per-forward series above %d forwards", PerForwardLimit)
	}
	for _, want := range []string{`fwdd_packets_total{direction="original"} 30`, `fwdd_connections 5`, `fwdd_forwards_exported 0`} {
		if !strings.Contains(big, want) {
			t.Errorf("metrics above the limit lack %q", want)
		}
	}
}

func TestOneScrapeAtATime(t *testing.T) {
	src := testSources(map[string]uint32{"web": 1})
	entered, release := make(chan struct{}), make(chan struct{})
	src.Totals = func() (nft.Totals, error) {
		entered <- struct{}{}
		<-release
		return nft.Totals{}, nil
	}
	m := New(src)
	done := make(chan int)
	go func() {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		done <- rec.Code
	}()
	<-entered
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("concurrent scrape: %d, want 503", rec.Code)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("first scrape: %d", code)
	}
}

// A reload while a scrape runs: under -race this catches any state that
// Applied and a scrape share without a lock.
func TestScrapeDuringReload(t *testing.T) {
	m := testMetrics()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			m.Applied(true, 1, 5, time.Millisecond)
		}
	}()
	for range 20 {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 {
			t.Fatalf("scrape: %d", rec.Code)
		}
	}
	<-done
}
