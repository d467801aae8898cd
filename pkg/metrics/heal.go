package metrics

import "github.com/prometheus/client_golang/prometheus"

// healMetrics count what the guard of fwdd's table saw and did.
type healMetrics struct {
	heals    *prometheus.CounterVec
	blockers prometheus.Gauge
}

func newHealMetrics(reg *prometheus.Registry) healMetrics {
	h := healMetrics{
		heals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fwdd_table_heals_total",
			Help: "Times fwdd re-applied its table after another process changed it, by how it noticed (event or check).",
		}, []string{"trigger"}),
		blockers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fwdd_foreign_blockers",
			Help: "Forward-hook chains of other tables that drop fwdd's connections.",
		}),
	}
	reg.MustRegister(h.heals, h.blockers)
	h.heals.WithLabelValues("event")
	h.heals.WithLabelValues("check")
	return h
}

// Healed records a re-apply of the table; trigger is "event" or "check".
func (m *Metrics) Healed(trigger string) { m.heal.heals.WithLabelValues(trigger).Inc() }

// Blockers records how many other tables' chains drop fwdd's connections.
func (m *Metrics) Blockers(n int) { m.heal.blockers.Set(float64(n)) }
