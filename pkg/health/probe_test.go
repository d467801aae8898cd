package health

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func TestDefaultPath(t *testing.T) {
	if got := (Spec{Kind: KindHTTP}).withDefaults(); got.Path != "/" || got.Interval != 2*time.Second ||
		got.Timeout != time.Second || got.Fall != 3 || got.Rise != 2 {
		t.Errorf("defaults = %+v", got)
	}
	if got := (Spec{Kind: KindTCP, Interval: 500 * time.Millisecond}).withDefaults(); got.Timeout != 500*time.Millisecond {
		t.Errorf("timeout with a short interval = %v, want the interval", got.Timeout)
	}
}

func TestClassify(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = net.Dial("tcp4", addr)
	if got := classify(err); got != "refused" {
		t.Errorf("classify(%v) = %q", err, got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if got := classify(ctx.Err()); got != "timeout" {
		t.Errorf("classify(deadline) = %q", got)
	}
	if got := classify(errors.New("x")); !strings.Contains(got, "error") {
		t.Errorf("classify(other) = %q", got)
	}
}
