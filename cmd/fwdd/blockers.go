package main

import (
	"fmt"
	"io"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/nft"
)

// warnBlockers tells, after a successful reload, which other tables' forward
// chains still drop fwdd's connections: the reload worked, forwarding may not.
func warnBlockers(cfg *config.Config, w io.Writer) {
	k := &nft.Netlink{}
	bs, err := k.ForeignBlockers(cfg.Daemon.Table, nft.ForwardedBy(cfg))
	if err != nil {
		return
	}
	for _, b := range bs {
		fmt.Fprintf(w, "warning: %s drops fwdd's connections; allow them: %s\n", b, b.Allow)
	}
}
