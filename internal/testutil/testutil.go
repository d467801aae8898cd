// Package testutil holds small helpers that unit tests of several packages
// share. Kernel and end-to-end tests use internal/sandbox and
// internal/harness instead.
package testutil

import (
	"net"
	"testing"

	"github.com/fwdd/fwdd/pkg/config"
)

// Config parses text as the config file "fwdd.toml" and fails tb if it is
// not valid.
func Config(tb testing.TB, text string) *config.Config {
	tb.Helper()
	cfg, err := config.Parse("fwdd.toml", []byte(text))
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// ListenTCP listens on addr ("127.0.0.1:0" picks a port) in the test's own
// network namespace and accepts and closes every connection, for code that
// checks whether a TCP port answers. The listener is closed when the test
// ends; close it earlier to make the port refuse.
func ListenTCP(tb testing.TB, addr string) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return ln
}
