package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/fwdd/fwdd/pkg/config"
	fwdaemon "github.com/fwdd/fwdd/pkg/daemon"
	"github.com/fwdd/fwdd/pkg/nft"
)

// runDiff prints what a reload with the file would change, like diff(1):
// exit 0 when nothing, 1 when something would change, 2 on error.
func runDiff(cfgPath, stateDir string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	running, health, err := inForce(stateDir)
	if err != nil {
		fmt.Fprintln(stderr, "fwdd diff:", err)
		return 2
	}
	forwards, settings := config.Diff(running, cfg)
	fmt.Fprintf(stdout, "--- in force (%s)\n+++ %s\n", fwdaemon.AppliedPath(stateDir), cfgPath)
	for _, s := range settings {
		fmt.Fprintf(stdout, "~ %s: %s -> %s\n", s.Field, s.Old, s.New)
	}
	byName := cfg.ForwardsByName()
	for _, f := range forwards {
		switch f.Kind {
		case "added":
			fmt.Fprintf(stdout, "+ forward %s\n", f.Name)
			for _, kv := range config.ForwardFields(byName[f.Name]) {
				fmt.Fprintf(stdout, "    %s = %s\n", kv[0], kv[1])
			}
		case "removed":
			fmt.Fprintf(stdout, "- forward %s\n", f.Name)
		case "changed":
			fmt.Fprintf(stdout, "~ forward %s\n", f.Name)
			for _, c := range f.Fields {
				fmt.Fprintf(stdout, "    %s: %s -> %s\n", c.Field, c.Old, c.New)
			}
		}
	}
	p, err := reloadPlan(running, cfg, health)
	if err != nil {
		fmt.Fprintln(stderr, "fwdd diff:", err)
		return 2
	}
	if len(forwards)+len(settings) == 0 && p.Empty() {
		fmt.Fprintln(stdout, "no difference")
		return 0
	}
	if p.Empty() {
		fmt.Fprintln(stdout, "\nthe table would not change (no batch)")
	} else {
		kind := "only the differences"
		if p.Full {
			kind = "the whole table (resets its counters)"
		}
		fmt.Fprintf(stdout, "\nthe batch a reload would send, %d messages, %s:\n%s", p.Messages(), kind, p.String())
	}
	return 1
}

// inForce is the config the running daemon has in force and its backends'
// health. The daemon's copy of the config (applied.toml) outlives it in the
// state directory, while its state file is removed when it stops and may
// name a process that died: the copy is read only once the daemon the
// state file names is verified to run (FindDaemon, for its own config).
func inForce(stateDir string) (*config.Config, []fwdaemon.BackendHealth, error) {
	st, err := fwdaemon.ReadState(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("fwdd is not running: no daemon state in %s", stateDir)
	}
	if err != nil {
		return nil, nil, err
	}
	d, err := fwdaemon.FindDaemon(stateDir, st.Config)
	if err != nil {
		return nil, nil, err
	}
	health := d.Backends
	d.Close()
	running, err := fwdaemon.ReadApplied(stateDir)
	if err != nil {
		return nil, nil, err
	}
	return running, health, nil
}

// reloadPlan is the batch a reload with cfg would send, decided as the
// daemon decides it (nft.PlanFrom): the differences from the model in
// force, or the whole table when the kernel's table no longer has its
// chains and sets. The model in force is the config in force without the
// backends the daemon found down (health, from its state file).
func reloadPlan(running, cfg *config.Config, health []fwdaemon.BackendHealth) (*nft.Plan, error) {
	compile := func(c *config.Config) (*nft.Model, error) {
		ids, err := nft.AssignIDs(c)
		if err != nil {
			return nil, err
		}
		m, err := nft.Compile(c, ids)
		if err != nil {
			return nil, err
		}
		return fwdaemon.WithHealth(m, health), nil
	}
	old, err := compile(running)
	if err != nil {
		return nil, err
	}
	m, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	return nft.PlanFrom(&nft.Netlink{}, old, m)
}
