package metrics

import "github.com/prometheus/client_golang/prometheus"

// Backend is the state of one health-checked backend of a forward.
type Backend struct {
	Forward, Backend string
	Up               bool
	Checks, Changes  uint64
	// Connections are its live conntrack entries (-1: unknown), of which
	// Established are open; Packets and Bytes their traffic (conntrack
	// accounting).
	Connections, Established int
	Packets, Bytes           uint64
}

var (
	descBackendUp = prometheus.NewDesc("fwdd_backend_up",
		"1 when a health-checked backend of a forward is up, 0 when it is down.", []string{"forward", "backend"}, nil)
	descBackendChanges = prometheus.NewDesc("fwdd_backend_health_changes_total",
		"Times a backend went up or down.", []string{"forward", "backend"}, nil)
	descBackendChecks = prometheus.NewDesc("fwdd_backend_checks_total",
		"Health checks of a backend.", []string{"forward", "backend"}, nil)
	descBackendConns = prometheus.NewDesc("fwdd_backend_connections",
		"Conntrack entries of a forward's connections to this backend.", []string{"forward", "backend"}, nil)
	descBackendEstablished = prometheus.NewDesc("fwdd_backend_established_connections",
		"Open connections (TCP established, UDP answered) of a forward to this backend.", []string{"forward", "backend"}, nil)
	descBackendPackets = prometheus.NewDesc("fwdd_backend_live_packets",
		"Packets, both directions, of the live connections to this backend (conntrack accounting; ended connections drop out).", []string{"forward", "backend"}, nil)
	descBackendBytes = prometheus.NewDesc("fwdd_backend_live_bytes",
		"Bytes, both directions, of the live connections to this backend (conntrack accounting; ended connections drop out).", []string{"forward", "backend"}, nil)
)

func describeBackends(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBackendUp, descBackendChanges, descBackendChecks, descBackendConns,
		descBackendEstablished, descBackendPackets, descBackendBytes} {
		ch <- d
	}
}

func collectBackends(ch chan<- prometheus.Metric, bs []Backend) {
	for _, b := range bs {
		up := 0.0
		if b.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descBackendUp, prometheus.GaugeValue, up, b.Forward, b.Backend)
		ch <- prometheus.MustNewConstMetric(descBackendChanges, prometheus.CounterValue, float64(b.Changes), b.Forward, b.Backend)
		ch <- prometheus.MustNewConstMetric(descBackendChecks, prometheus.CounterValue, float64(b.Checks), b.Forward, b.Backend)
		if b.Connections >= 0 {
			ch <- prometheus.MustNewConstMetric(descBackendConns, prometheus.GaugeValue, float64(b.Connections), b.Forward, b.Backend)
			ch <- prometheus.MustNewConstMetric(descBackendEstablished, prometheus.GaugeValue, float64(b.Established), b.Forward, b.Backend)
			ch <- prometheus.MustNewConstMetric(descBackendPackets, prometheus.GaugeValue, float64(b.Packets), b.Forward, b.Backend)
			ch <- prometheus.MustNewConstMetric(descBackendBytes, prometheus.GaugeValue, float64(b.Bytes), b.Forward, b.Backend)
		}
	}
}
