// Package metrics serves fwdd's Prometheus metrics. Per-forward packet and
// byte counters are read from the kernel at scrape time (the kernel is the
// source of truth), connection counts from the conntrack watcher.
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

// Sources are what a scrape reads.
type Sources struct {
	// Traffic reads the per-forward counters from the kernel.
	Traffic func() (map[string]*nft.Traffic, error)
	// Connections returns the conntrack watcher's counts (may be nil).
	Connections func() conntrack.Stats
	// Pressure returns the latest conntrack table reading (may be nil).
	Pressure func() conntrack.PressureStatus
}

// Metrics holds fwdd's own counters and the collector of kernel state.
type Metrics struct {
	reg            *prometheus.Registry
	reloads        *prometheus.CounterVec
	lastReload     prometheus.Gauge
	applyDuration  prometheus.Histogram
	forwards       prometheus.Gauge
	applyElements  prometheus.Gauge
	sources        Sources
	descPackets    *prometheus.Desc
	descBytes      *prometheus.Desc
	descLive       *prometheus.Desc
	descNew        *prometheus.Desc
	descOverflows  *prometheus.Desc
	descCTEntries  *prometheus.Desc
	descCTLimit    *prometheus.Desc
	descScrapeErrs *prometheus.Desc
	heal           healMetrics
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
			"Conntrack entries a forward holds now.", []string{"forward"}, nil),
		descNew: prometheus.NewDesc("fwdd_forward_connections_total",
			"New connections of a forward since fwdd started.", []string{"forward"}, nil),
		descOverflows: prometheus.NewDesc("fwdd_conntrack_event_overflows_total",
			"Conntrack event socket overflows, each followed by a resync.", nil, nil),
		descCTEntries: prometheus.NewDesc("fwdd_conntrack_entries",
			"Entries in the conntrack table (nf_conntrack_count).", nil, nil),
		descCTLimit: prometheus.NewDesc("fwdd_conntrack_entries_limit",
			"Size of the conntrack table (nf_conntrack_max).", nil, nil),
		descScrapeErrs: prometheus.NewDesc("fwdd_scrape_kernel_errors",
			"1 when reading counters from the kernel failed in this scrape.", nil, nil),
	}
	m.reg.MustRegister(m.reloads, m.lastReload, m.applyDuration, m.forwards, m.applyElements, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
	for _, d := range []*prometheus.Desc{m.descPackets, m.descBytes, m.descLive, m.descNew,
		m.descOverflows, m.descCTEntries, m.descCTLimit, m.descScrapeErrs} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	failed := 0.0
	if m.sources.Traffic != nil {
		tr, err := m.sources.Traffic()
		if err != nil {
			failed = 1
		}
		for name, t := range tr {
			ch <- prometheus.MustNewConstMetric(m.descPackets, prometheus.CounterValue, float64(t.OrigPackets), name, "original")
			ch <- prometheus.MustNewConstMetric(m.descPackets, prometheus.CounterValue, float64(t.ReplyPackets), name, "reply")
			ch <- prometheus.MustNewConstMetric(m.descBytes, prometheus.CounterValue, float64(t.OrigBytes), name, "original")
			ch <- prometheus.MustNewConstMetric(m.descBytes, prometheus.CounterValue, float64(t.ReplyBytes), name, "reply")
		}
	}
	ch <- prometheus.MustNewConstMetric(m.descScrapeErrs, prometheus.GaugeValue, failed)
	if m.sources.Connections != nil {
		st := m.sources.Connections()
		for name, f := range st.Forwards {
			ch <- prometheus.MustNewConstMetric(m.descLive, prometheus.GaugeValue, float64(f.Live), name)
			ch <- prometheus.MustNewConstMetric(m.descNew, prometheus.CounterValue, float64(f.New), name)
		}
		ch <- prometheus.MustNewConstMetric(m.descOverflows, prometheus.CounterValue, float64(st.Overflows))
	}
	if m.sources.Pressure != nil {
		p := m.sources.Pressure()
		if !p.Time.IsZero() {
			ch <- prometheus.MustNewConstMetric(m.descCTEntries, prometheus.GaugeValue, float64(p.Count))
			ch <- prometheus.MustNewConstMetric(m.descCTLimit, prometheus.GaugeValue, float64(p.Max))
		}
	}
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Serve listens on addr and serves /metrics until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string, log *zap.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
