package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

func newDemo(t *testing.T) *demo {
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root")
	}
	bin, err := harness.Binary()
	if err != nil {
		t.Fatal(err)
	}
	return &demo{bin: bin}
}

// `make demo` passes: every step, and nothing left behind.
func TestKernelDemo(t *testing.T) {
	d := newDemo(t)
	if code := d.run(context.Background(), false); code != 0 {
		t.Fatalf("demo exited %d", code)
	}
	if left, _ := filepath.Glob(filepath.Join("/run/netns", d.topo.Prefix+"-*")); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
}

// An interrupt (Ctrl-C) once fwdd runs: exit status 130, fwdd stopped,
// sandbox gone.
func TestKernelDemoInterrupted(t *testing.T) {
	d := newDemo(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		for ctx.Err() == nil {
			if m, _ := filepath.Glob("/run/fwdd-sandbox/fwdd_demo-*/fwdd-gateway/state/state.json"); len(m) > 0 {
				cancel(errors.New("interrupted"))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if code := d.run(ctx, false); code != 130 {
		t.Fatalf("interrupted demo exited %d, want 130", code)
	}
	if d.fwdd != nil && d.fwdd.Running() {
		t.Error("fwdd still running")
	}
	if left, _ := filepath.Glob(filepath.Join("/run/netns", d.topo.Prefix+"-*")); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
}
