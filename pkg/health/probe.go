package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// Kind is the kind of check.
type Kind string

// The checks.
const (
	KindNone Kind = "none" // no checks: the backend is always up
	KindTCP  Kind = "tcp"  // a TCP connect succeeds
	KindHTTP Kind = "http" // GET Path answers 2xx or 3xx
)

// Spec says how to check a backend. Its meaning is HAProxy's: a check every
// Interval, each given Timeout; a backend that is up goes down after Fall
// failed checks in a row, and one that is down comes back after Rise good
// checks in a row.
type Spec struct {
	Kind     Kind
	Interval time.Duration
	Timeout  time.Duration
	Fall     int
	Rise     int
	Path     string // KindHTTP only; "" means "/"
}

// Defaults for unset Spec fields (HAProxy's).
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = time.Second
	DefaultFall     = 3
	DefaultRise     = 2
	DefaultPath     = "/"
)

// withDefaults fills in unset fields.
func (s Spec) withDefaults() Spec {
	if s.Kind == "" {
		s.Kind = KindNone
	}
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout <= 0 {
		s.Timeout = min(DefaultTimeout, s.Interval)
	}
	if s.Fall <= 0 {
		s.Fall = DefaultFall
	}
	if s.Rise <= 0 {
		s.Rise = DefaultRise
	}
	if s.Kind == KindHTTP && s.Path == "" {
		s.Path = DefaultPath
	}
	return s
}

// DialFunc opens a connection; net.Dialer.DialContext is one.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// prober runs one check.
type prober struct {
	dial DialFunc
	http *http.Client
}

func newProber(dial DialFunc) *prober {
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	return &prober{
		dial: dial,
		http: &http.Client{
			Transport: &http.Transport{
				DialContext:       dial,
				DisableKeepAlives: true, // each check opens its own connection, as HAProxy's do
				Proxy:             nil,  // never a proxy from the environment
			},
			// A redirect is an answer (3xx is up): never follow it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// probe checks addr once. It returns nil when the backend passed, or an
// error whose Reason says why it did not.
func (p *prober) probe(ctx context.Context, spec Spec, addr netip.AddrPort) (reason string, err error) {
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	switch spec.Kind {
	case KindTCP:
		c, err := p.dial(ctx, "tcp", addr.String())
		if err != nil {
			return classify(err), err
		}
		c.Close()
		return "connected", nil
	case KindHTTP:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+spec.Path, nil)
		if err != nil {
			return "bad request", err
		}
		req.Header.Set("User-Agent", "fwdd-health-check")
		resp, err := p.http.Do(req)
		if err != nil {
			return classify(err), err
		}
		resp.Body.Close()
		reason = fmt.Sprintf("http status %d", resp.StatusCode)
		if resp.StatusCode < 200 || resp.StatusCode > 399 {
			return reason, errors.New(reason)
		}
		return reason, nil
	}
	return "", fmt.Errorf("unknown check %q", spec.Kind)
}

// classify names a failed connection the way an operator reads it.
func classify(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "error"
}
