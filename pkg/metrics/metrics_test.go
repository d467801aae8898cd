package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/nft"
)

func testMetrics() *Metrics {
	return New(Sources{
		Traffic: func() (map[string]*nft.Traffic, error) {
			return map[string]*nft.Traffic{"web": {Name: "web", ID: 1, OrigPackets: 3, OrigBytes: 180, ReplyPackets: 2, ReplyBytes: 120}}, nil
		},
		Connections: func() conntrack.Stats {
			return conntrack.Stats{Forwards: map[string]conntrack.ForwardStats{"web": {ID: 1, Live: 2, New: 5}}, Overflows: 1}
		},
		Pressure: func() conntrack.PressureStatus { return conntrack.PressureStatus{Count: 10, Max: 100, Time: nowish} },
	})
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
		"fwdd_forward_connections_total", "fwdd_conntrack_entries", "fwdd_conntrack_entries_limit",
		"fwdd_reloads_total", "fwdd_last_reload_success_timestamp_seconds", "fwdd_apply_duration_seconds",
		"fwdd_conntrack_event_overflows_total"}
	got := exported(t, testMetrics())
	for _, w := range want {
		if !got[w] {
			t.Errorf("metric %s is missing", w)
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
