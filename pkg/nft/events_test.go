package nft

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/internal/testutil"
)

// TestKernelEvents checks that commits are announced with the writer's pid
// and name and the objects they touched: fwdd's own replace (this process),
// then nft deleting one map element and the whole table.
func TestKernelEvents(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	gw := topo.Gateway
	k := &Netlink{NetNS: gw.Fd()}
	ev, err := k.WatchEvents()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ev.Close() })
	commits := make(chan Commit, 64)
	go func() {
		for {
			c, err := ev.Next()
			if err != nil && err != ErrEventsLost {
				close(commits)
				return
			}
			commits <- c
		}
	}()
	next := func() Commit {
		t.Helper()
		select {
		case c, ok := <-commits:
			if !ok {
				t.Fatal("event stream ended")
			}
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no commit announced within 5s")
		}
		return Commit{}
	}
	m := compileCfg(t, testutil.Config(t, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.22.0.2:8080\"\n"), nil)
	if err := k.Run(Replace(m)); err != nil {
		t.Fatal(err)
	}
	own := next()
	if !own.FromThisProcess() || len(own.Changes) == 0 {
		t.Fatalf("own commit: pid %d (want %d), %d changes", own.PID, os.Getpid(), len(own.Changes))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := gw.Run(ctx, "nft", "delete", "element", "inet", "fwdd", "dnat4_port", "{ tcp . 80 }"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	c := next()
	if c.Comm != "nft" || c.FromThisProcess() || len(c.Changes) != 1 ||
		c.Changes[0].String() != "delete element inet fwdd set dnat4_port" {
		t.Fatalf("element delete: %+v", c)
	}
	if out, err := gw.Run(ctx, "nft", "delete", "table", "inet", "fwdd"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	c = next()
	var names []string
	for _, ch := range c.Changes {
		names = append(names, ch.String())
	}
	all := strings.Join(names, "\n")
	if !strings.Contains(all, "delete table inet fwdd") || !strings.Contains(all, "delete chain inet fwdd prerouting") {
		t.Fatalf("table delete announced as:\n%s", all)
	}
	if out, err := gw.Run(ctx, "nft", "add table ip x; add chain ip x fw { type filter hook forward priority 0; policy drop; }"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	c = next()
	var chain *Change
	for i := range c.Changes {
		if c.Changes[i].Object == "chain" {
			chain = &c.Changes[i]
		}
	}
	if chain == nil || chain.Hook != "forward" || !chain.PolicyDrop || chain.Family != "ip" || chain.Name != "fw" {
		t.Fatalf("base chain announced as %+v", c.Changes)
	}
}
