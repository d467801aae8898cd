package daemon

import (
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/nft"
)

// staleFlow is a forward whose established connections a reload strands.
type staleFlow struct {
	forward string
	sel     conntrack.Selector
}

// staleFlows returns the conntrack entries to delete after a reload from
// old to cur: the UDP entries of every UDP forward that was removed or
// whose forwarding changed (anything but log). NAT is decided on a flow's
// first packet and kept in its conntrack entry, so without this a client
// sending a steady UDP stream keeps reaching the old target until the entry
// times out; once its entry is deleted, its next datagram is a new flow
// that the new rules translate. TCP connections keep their backend, unless
// the forward says on_change = "cut": then all its entries are deleted (its
// TCP connections are reset at their next packet). Forwards that did not
// change are never selected.
func staleFlows(old, cur *config.Config, oldIDs map[string]uint32) []staleFlow {
	now := cur.ForwardsByName()
	var out []staleFlow
	for i := range old.Forwards {
		f := &old.Forwards[i]
		id, known := oldIDs[f.Name]
		g, ok := now[f.Name]
		cut := f.OnChange == config.OnChangeCut
		if ok {
			cut = g.OnChange == config.OnChangeCut // the setting now in force
		}
		if !known || !cut && !slices.Contains(f.Protos, config.UDP) {
			continue
		}
		if ok && sameForwarding(f, g) {
			continue
		}
		sel := conntrack.Selector{Mark: old.Daemon.CtMark.ForID(id)}
		if len(f.Protos) > 1 && !cut {
			sel.Proto = uint8(config.UDP) // and only UDP: TCP keeps its backend
		}
		if ok && (f.Balanced() || g.Balanced()) && sameButBackends(f, g) {
			// Only the backends changed: the flows of backends that stay
			// keep theirs.
			for _, b := range f.Backends {
				if slices.ContainsFunc(g.Backends, func(c config.Backend) bool { return c.To == b.To && c.ToPort == b.ToPort }) {
					continue
				}
				s := sel
				if !cut {
					s.Proto = uint8(config.UDP)
				}
				s.Backend = b.To
				s.PortFirst, s.PortLast = b.ToPort.Lo, b.ToPort.Hi
				out = append(out, staleFlow{forward: f.Name, sel: s})
			}
			continue
		}
		out = append(out, staleFlow{forward: f.Name, sel: sel})
	}
	return out
}

// sameForwarding reports whether f and g translate established flows the
// same way: log, health checks, balance and weights do not matter to them.
func sameForwarding(f, g *config.Forward) bool {
	a := *f
	a.Log, a.Health, a.Balance, a.OnChange = g.Log, g.Health, g.Balance, g.OnChange
	if len(a.Backends) == len(g.Backends) {
		a.Backends = slices.Clone(a.Backends)
		for i := range a.Backends {
			a.Backends[i].Weight = g.Backends[i].Weight
		}
	}
	return a.Equal(g)
}

// sameButBackends reports whether f and g differ only in their backends.
func sameButBackends(f, g *config.Forward) bool {
	a := *f
	a.Backends, a.To, a.ToPort = g.Backends, g.To, g.ToPort
	return sameForwarding(&a, g)
}

// deleteFlows deletes conntrack entries in the namespace of the daemon's
// netlink kernel; with any other kernel (the fake of the tests) it does
// nothing unless Options.DeleteFlows says what to do, so that a test never
// touches the conntrack table of the namespace it runs in.
func (d *Daemon) deleteFlows(sels ...conntrack.Selector) (int, error) {
	if d.opts.DeleteFlows != nil {
		return d.opts.DeleteFlows(sels...)
	}
	if k, ok := d.opts.Kernel.(*nft.Netlink); ok {
		return conntrack.Delete(k.NetNS, d.InForce().Config.Daemon.CtMark, sels...)
	}
	return 0, nil
}

// deleteStaleFlows deletes the conntrack entries a reload stranded (see
// staleFlows). A failure is logged: the new rules are in force and the
// entries time out on their own.
func (d *Daemon) deleteStaleFlows(stale []staleFlow) {
	if len(stale) == 0 {
		return
	}
	start := time.Now()
	sels := make([]conntrack.Selector, len(stale))
	names := make([]string, len(stale))
	for i, s := range stale {
		sels[i], names[i] = s.sel, s.forward
	}
	n, err := d.deleteFlows(sels...)
	if err != nil {
		d.log.Warn("cannot delete the conntrack entries of changed forwards; they follow the old target until they time out",
			zap.Strings("forwards", names), zap.Int("deleted", n), zap.Error(err))
		return
	}
	d.log.Info("deleted conntrack entries of changed forwards",
		zap.Strings("forwards", names), zap.Int("deleted", n), zap.Duration("elapsed", time.Since(start)))
}
