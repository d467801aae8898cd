// Package metrics serves fwdd's Prometheus metrics. Everything is read
// from the kernel at scrape time (the kernel is the source of truth): the
// per-forward counters of fwdd's table by key, the totals from its rule
// counters, live connections from one conntrack dump filtered by fwdd's
// mark.
//
// Per-forward series are exported while the config has at most
// PerForwardLimit forwards; above that only the totals (and fwdd's own
// metrics), so that a scrape's cost and the number of series stay bounded
// whatever the number of forwards (Prometheus' advice against unbounded
// label cardinality). `fwdd status NAME` shows any single forward.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/nft"
)

// PerForwardLimit is the largest number of forwards whose per-forward
// series are exported.
const PerForwardLimit = 1000

// Sources are what a scrape reads. Nil functions are skipped.
type Sources struct {
	// Forwards returns the forwards in force, name -> id.
	Forwards func() map[string]uint32
	// Traffic reads the counters of the given forwards from the kernel.
	Traffic func(ids map[string]uint32) (map[string]*nft.Traffic, error)
	// Totals reads the counters of all forwards together.
	Totals func() (nft.Totals, error)
	// Connections returns the live connections by forward id.
	Connections func() (map[uint32]conntrack.Live, error)
	// Overflows counts conntrack events lost (connection log).
	Overflows func() uint64
	// Pressure returns the latest conntrack table reading.
	Pressure func() conntrack.PressureStatus
	// Backends returns the health-checked backends (may be nil).
	Backends func() []Backend
}

// Metrics holds fwdd's own counters and the collector of kernel state.
type Metrics struct {
	reg           *prometheus.Registry
	reloads       *prometheus.CounterVec
	lastReload    prometheus.Gauge
	applyDuration prometheus.Histogram
	forwards      prometheus.Gauge
	applyElements prometheus.Gauge
	sources       Sources
	handler       http.Handler

	descPackets, descBytes, descLive, descEstablished, descNew                *prometheus.Desc
	descAllPackets, descAllBytes, descAllLive, descAllEstablished, descAllNew *prometheus.Desc
	descExported, descOverflows, descCTEntries, descCTLimit, descScrapeErrs   *prometheus.Desc
	heal                                                                      healMetrics
}

// New registers fwdd's metrics.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fwdd_reloads_total", Help: "Config reloads, by result (success or failure).",
		}, []string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fwdd_last_reload_success_timestamp_seconds", Help: "When the config was last applied successfully (start or reload).",
		}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fwdd_apply_duration_seconds", Help: "Time to apply a ruleset change to the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		forwards: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fwdd_forwards", Help: "Forwards in the applied config.",
		}),
		applyElements: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fwdd_table_elements", Help: "Set and map elements in fwdd's table.",
		}),
		sources: src,
		descPackets: prometheus.NewDesc("fwdd_forward_packets_total",
			"Packets of a forward's connections, by direction (original: client to backend; reply: backend to client).",
			[]string{"forward", "direction"}, nil),
		descBytes: prometheus.NewDesc("fwdd_forward_bytes_total",
			"Bytes of a forward's connections, by direction.", []string{"forward", "direction"}, nil),
		descLive: prometheus.NewDesc("fwdd_forward_connections",
			"Conntrack entries a forward holds now, closed connections the kernel still remembers included.", []string{"forward"}, nil),
		descEstablished: prometheus.NewDesc("fwdd_forward_connections_established",
			"A forward's established connections (TCP established, other protocols assured).", []string{"forward"}, nil),
		descNew: prometheus.NewDesc("fwdd_forward_new_connections_total",
			"New connections of a forward, counted by the kernel since its counter was created.", []string{"forward"}, nil),
		descAllPackets: prometheus.NewDesc("fwdd_packets_total",
			"Packets of all forwards' connections, by direction.", []string{"direction"}, nil),
		descAllBytes: prometheus.NewDesc("fwdd_bytes_total",
			"Bytes of all forwards' connections, by direction.", []string{"direction"}, nil),
		descAllLive: prometheus.NewDesc("fwdd_connections",
			"Conntrack entries of all forwards.", nil, nil),
		descAllEstablished: prometheus.NewDesc("fwdd_connections_established",
			"Established connections of all forwards.", nil, nil),
		descAllNew: prometheus.NewDesc("fwdd_new_connections_total",
			"New connections of all forwards, counted by the kernel since fwdd's table was created.", nil, nil),
		descExported: prometheus.NewDesc("fwdd_forwards_exported",
			fmt.Sprintf("Forwards with per-forward series (all of them up to %d forwards, else none).", PerForwardLimit), nil, nil),
		descOverflows: prometheus.NewDesc("fwdd_conntrack_event_overflows_total",
			"Conntrack event socket overflows: new connections of forwards with log = true that were not logged.", nil, nil),
		descCTEntries: prometheus.NewDesc("fwdd_conntrack_entries",
			"Entries in the conntrack table (nf_conntrack_count).", nil, nil),
		descCTLimit: prometheus.NewDesc("fwdd_conntrack_entries_limit",
			"Size of the conntrack table (nf_conntrack_max).", nil, nil),
		descScrapeErrs: prometheus.NewDesc("fwdd_scrape_kernel_errors",
			"1 when reading counters from the kernel failed in this scrape.", nil, nil),
	}
	m.reg.MustRegister(m.reloads, m.lastReload, m.applyDuration, m.forwards, m.applyElements, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// One scrape at a time: a second concurrent one gets 503 rather than
	// doubling the daemon's work.
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 1})
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	m.heal = newHealMetrics(m.reg)
	return m
}

// Applied records a successful start or reload.
func (m *Metrics) Applied(reload bool, forwards, elements int, elapsed time.Duration) {
	if reload {
		m.reloads.WithLabelValues("success").Inc()
	}
	m.lastReload.SetToCurrentTime()
	m.applyDuration.Observe(elapsed.Seconds())
	m.forwards.Set(float64(forwards))
	m.applyElements.Set(float64(elements))
}

// ReloadFailed records a failed reload.
func (m *Metrics) ReloadFailed() { m.reloads.WithLabelValues("failure").Inc() }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.descPackets, m.descBytes, m.descLive, m.descEstablished, m.descNew,
		m.descAllPackets, m.descAllBytes, m.descAllLive, m.descAllEstablished, m.descAllNew,
		m.descExported, m.descOverflows, m.descCTEntries, m.descCTLimit, m.descScrapeErrs} {
		ch <- d
	}
	describeBackends(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	src := m.sources
	failed := 0.0
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	var ids map[string]uint32
	if src.Forwards != nil {
		ids = src.Forwards()
	}
	perForward := len(ids) <= PerForwardLimit
	if perForward && src.Traffic != nil && len(ids) > 0 {
		tr, err := src.Traffic(ids)
		if err != nil {
			failed = 1
		}
		for name, t := range tr {
			counter(m.descPackets, t.OrigPackets, name, "original")
			counter(m.descPackets, t.ReplyPackets, name, "reply")
			counter(m.descBytes, t.OrigBytes, name, "original")
			counter(m.descBytes, t.ReplyBytes, name, "reply")
			counter(m.descNew, t.New, name)
		}
	}
	if src.Totals != nil {
		if tot, err := src.Totals(); err != nil {
			failed = 1
		} else {
			counter(m.descAllPackets, tot.OrigPackets, "original")
			counter(m.descAllPackets, tot.ReplyPackets, "reply")
			counter(m.descAllBytes, tot.OrigBytes, "original")
			counter(m.descAllBytes, tot.ReplyBytes, "reply")
			counter(m.descAllNew, tot.New)
		}
	}
	if src.Connections != nil {
		if live, err := src.Connections(); err != nil {
			failed = 1
		} else {
			var all conntrack.Live
			for _, l := range live {
				all.Total += l.Total
				all.Established += l.Established
			}
			if perForward {
				for name, id := range ids {
					gauge(m.descLive, live[id].Total, name)
					gauge(m.descEstablished, live[id].Established, name)
				}
			}
			gauge(m.descAllLive, all.Total)
			gauge(m.descAllEstablished, all.Established)
		}
	}
	exported := 0
	if perForward {
		exported = len(ids)
	}
	gauge(m.descExported, exported)
	if src.Overflows != nil {
		counter(m.descOverflows, src.Overflows())
	}
	ch <- prometheus.MustNewConstMetric(m.descScrapeErrs, prometheus.GaugeValue, failed)
	if src.Backends != nil {
		collectBackends(ch, src.Backends())
	}
	if src.Pressure != nil {
		p := src.Pressure()
		if !p.Time.IsZero() {
			gauge(m.descCTEntries, p.Count)
			gauge(m.descCTLimit, p.Max)
		}
	}
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return m.handler
}

// Serve listens on addr and serves /metrics until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string, log *zap.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	log.Info("serving metrics", zap.String("address", ln.Addr().String()))
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}
