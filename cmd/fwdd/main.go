// Command fwdd forwards ports in the kernel with one nftables table of its
// own. main only parses flags and wires packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"

	"github.com/fwdd/fwdd/internal/logging"
	"github.com/fwdd/fwdd/pkg/config"
	fwdaemon "github.com/fwdd/fwdd/pkg/daemon"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/selfcheck"
	fwstatus "github.com/fwdd/fwdd/pkg/status"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: fwdd <command> [flags]

commands:
  run      run the daemon in the foreground (systemd: Type=notify)
  check    validate the config; exit 1 with every problem on stderr
  print    print, in nft syntax, the table fwdd would program
  reload   check the config, signal the daemon, wait until the new rules are in
  status   show the table, forwarding, conntrack, per-forward counters and each backend's health (NAME...: only those)
  diff     what a reload with the file would change (exit 0 none, 1 changes, 2 error)
  doctor   check the gateway for what breaks forwarding, each problem with its fix
  health   cheap check of this node for keepalived's track_script (exit codes: fwdd(8))
  version  print fwdd's version

flags (all commands): -c, --config PATH (default /etc/fwdd/fwdd.toml)
only status takes arguments (forward names); flags may follow them
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("fwdd "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := config.DefaultPath
	fs.StringVar(&cfgPath, "c", cfgPath, "config file")
	fs.StringVar(&cfgPath, "config", cfgPath, "config file")
	stateDir := fs.String("state-dir", fwdaemon.DefaultStateDir, "where the daemon records its latest apply and its backends' health")
	jsonOut := fs.Bool("json", false, "status, doctor: print JSON")
	probe := fs.Bool("probe", false, "doctor: connect to each backend")
	timeout := fs.Duration("timeout", time.Minute, "reload: how long to wait for the daemon")
	names, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if use, known := commandUsage[cmd]; known && len(names) > 0 && cmd != "status" {
		fmt.Fprintf(stderr, "fwdd %s: unexpected argument %q: %s takes none", cmd, names[0], cmd)
		if strings.Contains(use, "-c PATH") {
			fmt.Fprint(stderr, " (the config file is -c PATH)")
		}
		fmt.Fprintf(stderr, "\nusage: %s\n", use)
		return 2
	}
	switch cmd {
	case "run":
		return runDaemon(cfgPath, *stateDir, stdout)
	case "check":
		cfg, err := config.Load(cfgPath)
		if err != nil {
			printErr(stderr, err) // ExecStartPre: why a start failed, at priority err
			return 1
		}
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w.Error())
		}
		fmt.Fprintf(stdout, "%s: ok, %d forwards\n", cfgPath, len(cfg.Forwards))
		return 0
	case "print":
		m, err := compileFile(cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if err := m.Render(stdout); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "reload":
		if err := reload(cfgPath, *stateDir, *timeout, stdout); err != nil {
			printErr(stderr, err)
			return 1
		}
		return 0
	case "status":
		return status(cfgPath, *stateDir, names, *jsonOut, stdout, stderr)
	case "diff":
		return runDiff(cfgPath, *stateDir, stdout, stderr)
	case "doctor":
		return runDoctor(cfgPath, *stateDir, *probe, *jsonOut, stdout, stderr)
	case "health":
		res := selfcheck.Check(selfcheck.Options{ConfigPath: cfgPath, StateDir: *stateDir})
		if res.Code == selfcheck.OK {
			fmt.Fprintln(stdout, res.Message)
		} else {
			fmt.Fprintln(stderr, "fwdd health:", res.Message)
		}
		return res.Code
	case "version":
		fmt.Fprintln(stdout, "fwdd", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "fwdd: unknown command %q\n\n%s", cmd, usage)
	return 2
}

// commandUsage is each command's synopsis; only status takes arguments.
var commandUsage = map[string]string{
	"run":     "fwdd run [-c PATH] [--state-dir DIR]",
	"check":   "fwdd check [-c PATH]",
	"print":   "fwdd print [-c PATH]",
	"reload":  "fwdd reload [-c PATH] [--state-dir DIR] [--timeout D]",
	"status":  "fwdd status [-c PATH] [--state-dir DIR] [--json] [NAME...]",
	"diff":    "fwdd diff [-c PATH] [--state-dir DIR]",
	"doctor":  "fwdd doctor [-c PATH] [--state-dir DIR] [--probe] [--json]",
	"health":  "fwdd health [-c PATH] [--state-dir DIR]",
	"version": "fwdd version",
	"help":    "fwdd help",
	"-h":      "fwdd help",
	"--help":  "fwdd help",
}

// parseInterspersed parses flags wherever they are among the arguments
// (`fwdd status web --json`), as the flag package alone stops at the first
// non-flag, and returns the others in order. After "--" everything is an
// argument (so is everything after a flag whose value is "--", as for
// `-c --`: the flag package does not say which it consumed).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		left := fs.Args()
		if len(left) == 0 {
			return rest, nil
		}
		if n := len(args) - len(left); n > 0 && args[n-1] == "--" {
			return append(rest, left...), nil
		}
		rest = append(rest, left[0])
		args = left[1:]
	}
}

// compileFile compiles the config; forward ids are a function of the file,
// so the printed table is the one the daemon programs.
func compileFile(path string) (*nft.Model, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	ids, err := nft.AssignIDs(cfg)
	if err != nil {
		return nil, err
	}
	return nft.Compile(cfg, ids)
}

func runDaemon(cfgPath, stateDir string, stdout io.Writer) int {
	level := zap.NewAtomicLevel()
	log := logging.New(stdout, level)
	defer func() { _ = log.Sync() }()
	d := fwdaemon.New(fwdaemon.Options{
		ConfigPath: cfgPath,
		StateDir:   stateDir,
		Log:        log,
		SetLevel: func(s string) error {
			l, err := logging.ParseLevel(s)
			if err == nil {
				level.SetLevel(l)
			}
			return err
		},
		Notify: func(state string) { _, _ = daemon.SdNotify(false, state) },
	})
	defer func() {
		if err := d.RemoveState(); err != nil {
			log.Warn("cannot remove daemon state", zap.Error(err))
		}
	}()
	reloads, stops := notifySignals()
	if err := d.Start(); err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	if err := d.Run(context.Background(), reloads, stops); err != nil {
		if errors.Is(err, fwdaemon.ErrSecondSignal) {
			log.Warn("exiting at once on a second signal")
			return 0
		}
		log.Error("stop failed", zap.Error(err))
		return 1
	}
	return 0
}

// notifySignals subscribes to the daemon's signals. signal.Notify drops a
// signal whose channel is full, so stop signals have their own channel (room
// for the second one that cuts a stop short) that no burst of SIGHUPs can
// fill. One pending SIGHUP is enough: the reload reads the file as it is
// when it runs.
func notifySignals() (reloads, stops chan os.Signal) {
	reloads, stops = make(chan os.Signal, 1), make(chan os.Signal, 2)
	signal.Notify(reloads, syscall.SIGHUP)
	signal.Notify(stops, syscall.SIGTERM, syscall.SIGINT)
	return reloads, stops
}

// reload checks the file first, so a bad file changes nothing and says what
// is wrong, then signals the daemon and waits for its verdict. It signals
// only a process it has verified to be the fwdd daemon of this config in
// this network namespace (see daemon.FindDaemon), through a pidfd.
func reload(cfgPath, stateDir string, timeout time.Duration, stdout io.Writer) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return fmt.Errorf("%w\nreload refused: the running rules are unchanged", err)
	}
	d, err := fwdaemon.FindDaemon(stateDir, cfgPath)
	if err != nil {
		return fmt.Errorf("reload refused: %w", err)
	}
	defer d.Close()
	st, err := d.Reload(timeout)
	if err != nil {
		return err
	}
	if !st.OK {
		return fmt.Errorf("reload failed, the running rules are unchanged: %s", st.Error)
	}
	fmt.Fprintf(stdout, "reloaded: %d forwards\n", st.Forwards)
	warnBlockers(cfg, stdout)
	return nil
}

// printErr writes err to stderr. When stderr is a journal stream (under
// systemd, e.g. ExecReload=) each line carries the syslog prefix <3>, so the
// journal stores it at priority err and `journalctl -p warning` shows it;
// without it the journal would take the unit's default, info.
func printErr(stderr io.Writer, err error) {
	prefix := ""
	if stderr == io.Writer(os.Stderr) {
		if ok, _ := journal.StderrIsJournalStream(); ok {
			prefix = "<3>"
		}
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintln(stderr, prefix+line)
	}
}

func status(cfgPath, stateDir string, only []string, jsonOut bool, stdout, stderr io.Writer) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	src := fwstatus.Sources{Only: only}
	// The backends' health is known only to the daemon: its state file
	// records it, trusted once FindDaemon verified who wrote it.
	if d, err := fwdaemon.FindDaemon(stateDir, cfgPath); err == nil {
		src.Health = d.Backends
		if src.Health == nil {
			src.Health = []fwdaemon.BackendHealth{}
		}
		d.Close()
	}
	r, err := fwstatus.Collect(cfg, src)
	if err != nil {
		fmt.Fprintln(stderr, "status:", err)
		return 1
	}
	if jsonOut {
		err = r.WriteJSON(stdout)
	} else {
		err = r.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if !r.Table.Present || !r.Table.MatchesConfig {
		return 3 // like systemctl status: not running as configured
	}
	if len(r.Blockers) > 0 {
		return 4 // another firewall drops the forwarded connections
	}
	return 0
}
