package health_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/health"
)

// fast is a Spec quick enough for unit tests.
func fast(kind health.Kind) health.Spec {
	return health.Spec{Kind: kind, Interval: 30 * time.Millisecond, Timeout: 200 * time.Millisecond, Fall: 3, Rise: 2}
}

// recorder collects the changes a Checker reports.
type recorder struct {
	mu sync.Mutex
	ch []health.Change
	c  chan health.Change
}

func newRecorder() *recorder { return &recorder{c: make(chan health.Change, 100)} }

func (r *recorder) onChange(c health.Change) {
	r.mu.Lock()
	r.ch = append(r.ch, c)
	r.mu.Unlock()
	r.c <- c
}

func (r *recorder) all() []health.Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]health.Change(nil), r.ch...)
}

// next waits for the next change.
func (r *recorder) next(t *testing.T, within time.Duration) health.Change {
	t.Helper()
	select {
	case c := <-r.c:
		return c
	case <-time.After(within):
		t.Fatalf("no change within %v; so far %+v", within, r.all())
		return health.Change{}
	}
}

// start runs c until the test ends.
func start(t *testing.T, c *health.Checker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within 5s of cancel")
		}
	})
	<-c.Running()
}

func addrOf(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func TestTCPDownAndBack(t *testing.T) {
	ln := testutil.ListenTCP(t, "127.0.0.1:0")
	addr := addrOf(t, ln.Addr())
	rec := newRecorder()
	c := health.New(health.Options{OnChange: rec.onChange})
	key := health.Key{Forward: "web", Backend: addr}
	c.Set([]health.Target{{Key: key, Spec: fast(health.KindTCP)}})
	start(t, c)

	// Up from the start, and it stays up.
	time.Sleep(150 * time.Millisecond)
	if st := c.Status()[key]; !st.Up || !st.Checked || st.Last.Reason != "connected" || st.Changes != 0 {
		t.Fatalf("status while listening = %+v", st)
	}
	if got := rec.all(); len(got) != 0 {
		t.Fatalf("changes while up: %+v", got)
	}

	ln.Close()
	t0 := time.Now()
	ch := rec.next(t, 5*time.Second)
	if ch.Up || ch.Key != key || ch.Result.Reason != "refused" || ch.Result.OK {
		t.Fatalf("change = %+v, want down, refused", ch)
	}
	t.Logf("down after %v", time.Since(t0))
	if c.Up(key) {
		t.Error("Up = true after the down change")
	}

	testutil.ListenTCP(t, addr.String())
	ch = rec.next(t, 5*time.Second)
	if !ch.Up || ch.Result.Reason != "connected" {
		t.Fatalf("change = %+v, want up, connected", ch)
	}
	time.Sleep(100 * time.Millisecond)
	if got := rec.all(); len(got) != 2 {
		t.Errorf("changes = %+v, want exactly down then up", got)
	}
	if st := c.Status()[key]; st.Changes != 2 || !st.Up {
		t.Errorf("status = %+v", st)
	}
}

// scripted is a DialFunc whose outcome the test sets per backend.
type scripted struct {
	mu     sync.Mutex
	fail   map[string]bool
	dials  map[string]int
	active atomic.Int32
	peak   atomic.Int32
	hold   time.Duration
}

func newScripted() *scripted {
	return &scripted{fail: map[string]bool{}, dials: map[string]int{}}
}

// set sets the outcome for addr and returns how many dials it has had.
func (s *scripted) set(addr string, fail bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[addr] = fail
	return s.dials[addr]
}

func (s *scripted) count(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dials[addr]
}

func (s *scripted) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	n := s.active.Add(1)
	defer s.active.Add(-1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if s.hold > 0 {
		select {
		case <-time.After(s.hold):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.mu.Lock()
	s.dials[addr]++
	fail := s.fail[addr]
	s.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

// TestFallRise counts the checks: down exactly at the fall-th failure in a
// row, up again exactly at the rise-th success in a row, and a single
// failure between successes changes nothing.
func TestFallRise(t *testing.T) {
	s := newScripted()
	rec := newRecorder()
	c := health.New(health.Options{Dial: s.dial, OnChange: rec.onChange})
	addr := netip.MustParseAddrPort("192.0.2.1:80")
	key := health.Key{Forward: "f", Backend: addr}
	spec := fast(health.KindTCP)
	spec.Fall, spec.Rise = 4, 3
	c.Set([]health.Target{{Key: key, Spec: spec}})
	start(t, c)

	waitChecks := func(n uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for c.Status()[key].Checks < n {
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d checks after 5s", n)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	waitChecks(2)
	first := s.set(addr.String(), true)
	ch := rec.next(t, 5*time.Second)
	if ch.Up {
		t.Fatalf("change = %+v, want down", ch)
	}
	if n := s.count(addr.String()) - first; n != spec.Fall {
		t.Errorf("down after %d failed checks, want fall = %d", n, spec.Fall)
	}
	first = s.set(addr.String(), false)
	ch = rec.next(t, 5*time.Second)
	if !ch.Up {
		t.Fatalf("change = %+v, want up", ch)
	}
	if n := s.count(addr.String()) - first; n != spec.Rise {
		t.Errorf("up after %d good checks, want rise = %d", n, spec.Rise)
	}
}

func TestHTTPCheck(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	var paths sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths.Store(r.URL.Path, true)
		if r.URL.Path == "/slow" {
			<-r.Context().Done()
			return
		}
		if status.Load() == 302 {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	addr := addrOf(t, srv.Listener.Addr())

	rec := newRecorder()
	c := health.New(health.Options{OnChange: rec.onChange})
	key := health.Key{Forward: "web", Backend: addr}
	spec := fast(health.KindHTTP)
	spec.Path = "/healthz"
	slowKey := health.Key{Forward: "slow", Backend: addr}
	slow := fast(health.KindHTTP)
	slow.Path, slow.Timeout, slow.Fall = "/slow", 50*time.Millisecond, 1
	c.Set([]health.Target{{Key: key, Spec: spec}, {Key: slowKey, Spec: slow}})
	start(t, c)

	ch := rec.next(t, 5*time.Second)
	if ch.Key != slowKey || ch.Up || ch.Result.Reason != "timeout" {
		t.Fatalf("change = %+v, want slow down by timeout", ch)
	}
	status.Store(302) // a redirect is an answer: still up
	time.Sleep(150 * time.Millisecond)
	if st := c.Status()[key]; !st.Up || st.Last.Reason != "http status 302" {
		t.Fatalf("status with 302 = %+v", st)
	}
	status.Store(500)
	ch = rec.next(t, 5*time.Second)
	if ch.Key != key || ch.Up || ch.Result.Reason != "http status 500" {
		t.Fatalf("change = %+v, want web down with http status 500", ch)
	}
	status.Store(204)
	ch = rec.next(t, 5*time.Second)
	if ch.Key != key || !ch.Up || ch.Result.Reason != "http status 204" {
		t.Fatalf("change = %+v, want web up with http status 204", ch)
	}
	if _, ok := paths.Load("/healthz"); !ok {
		t.Error("the check never asked for /healthz")
	}
	if _, ok := paths.Load("/elsewhere"); ok {
		t.Error("the check followed a redirect")
	}
}

// TestBoundedConcurrency: many slow checks never run more than Workers at
// once, and every target still gets checked.
func TestBoundedConcurrency(t *testing.T) {
	s := newScripted()
	s.hold = 5 * time.Millisecond
	c := health.New(health.Options{Dial: s.dial, Workers: 4})
	var targets []health.Target
	for i := range 200 {
		targets = append(targets, health.Target{
			Key:  health.Key{Forward: "f", Backend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 80)},
			Spec: health.Spec{Kind: health.KindTCP, Interval: 20 * time.Millisecond, Timeout: time.Second},
		})
	}
	c.Set(targets)
	start(t, c)
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for _, st := range c.Status() {
			if st.Checks < 2 {
				all = false
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not every target checked twice within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := s.peak.Load(); p > 4 || p < 2 {
		t.Errorf("peak concurrent checks = %d, want 2..4 (Workers = 4)", p)
	}
}

// TestTimeoutsDoNotQueue: backends that all time out at once are all
// checked at once (a check holds its place for the whole timeout): with too
// few places their checks would queue, and every other backend's with them.
func TestTimeoutsDoNotQueue(t *testing.T) {
	s := newScripted()
	s.hold = time.Hour // no answer: each check lasts its timeout
	c := health.New(health.Options{Dial: s.dial})
	var targets []health.Target
	for i := range 300 {
		targets = append(targets, health.Target{
			Key:  health.Key{Forward: "f", Backend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2 + byte(i/250), byte(i % 250)}), 80)},
			Spec: health.Spec{Kind: health.KindTCP, Interval: 100 * time.Millisecond, Timeout: 2 * time.Second},
		})
	}
	c.Set(targets)
	start(t, c)
	// All are due within their first interval, and none answers for 2 s.
	for deadline := time.Now().Add(1500 * time.Millisecond); s.peak.Load() < 300 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if p := s.peak.Load(); p != 300 {
		t.Errorf("peak concurrent checks = %d, want all 300 at once", p)
	}
}

// TestSetKeepsState: a reload that keeps a backend keeps its state and
// reports nothing; a removed backend is forgotten and never reported.
func TestSetKeepsState(t *testing.T) {
	s := newScripted()
	rec := newRecorder()
	c := health.New(health.Options{Dial: s.dial, OnChange: rec.onChange})
	a := health.Key{Forward: "f", Backend: netip.MustParseAddrPort("192.0.2.1:80")}
	b := health.Key{Forward: "f", Backend: netip.MustParseAddrPort("192.0.2.2:80")}
	s.set(a.Backend.String(), true)
	spec := fast(health.KindTCP)
	spec.Fall = 1
	c.Set([]health.Target{{Key: a, Spec: spec}, {Key: b, Spec: spec}})
	start(t, c)
	if ch := rec.next(t, 5*time.Second); ch.Key != a || ch.Up {
		t.Fatalf("change = %+v, want a down", ch)
	}
	c.Set([]health.Target{{Key: a, Spec: spec}, {Key: health.Key{Forward: "g", Backend: b.Backend}, Spec: spec}})
	st := c.Status()
	if st[a].Up {
		t.Error("a up again after Set")
	}
	if _, ok := st[b]; ok {
		t.Error("removed target still in health.Status")
	}
	s.set(b.Backend.String(), true) // only g's copy could see it now
	ch := rec.next(t, 5*time.Second)
	if ch.Forward != "g" || ch.Up {
		t.Fatalf("change = %+v, want g down", ch)
	}
	c.Set([]health.Target{{Key: a, Spec: health.Spec{Kind: health.KindNone}}})
	if len(c.Status()) != 0 || !c.Up(a) {
		t.Errorf("check none: status %+v, Up %v; want no checks and up", c.Status(), c.Up(a))
	}
	time.Sleep(100 * time.Millisecond)
	for _, ch := range rec.all()[2:] {
		t.Errorf("unexpected change %+v", ch)
	}
}
