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
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"github.com/fwdd/fwdd/internal/logging"
	"github.com/fwdd/fwdd/pkg/config"
	fwdaemon "github.com/fwdd/fwdd/pkg/daemon"
	"github.com/fwdd/fwdd/pkg/nft"
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
  status   show the table, forwarding, conntrack and per-forward counters
  diff     what a reload with the file would change: forwards field by field
           (exit 0: none, 1: changes, 2: error)
  doctor   check the gateway for what breaks forwarding; each problem with its fix
           (--probe: connect to each backend; --json)
  version  print fwdd's version

flags (all commands): -c, --config PATH (default /etc/fwdd/fwdd.toml)
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
	stateDir := fs.String("state-dir", fwdaemon.DefaultStateDir, "where the daemon records its latest apply")
	jsonOut := fs.Bool("json", false, "status, doctor: print JSON")
	probe := fs.Bool("probe", false, "doctor: connect to each backend")
	timeout := fs.Duration("timeout", time.Minute, "reload: how long to wait for the daemon")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch cmd {
	case "run":
		return runDaemon(cfgPath, *stateDir, stdout)
	case "check":
		cfg, err := config.Load(cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, err)
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
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "status":
		return status(cfgPath, *jsonOut, stdout, stderr)
	case "diff":
		return runDiff(cfgPath, *stateDir, stdout, stderr)
	case "doctor":
		return runDoctor(cfgPath, *stateDir, *probe, *jsonOut, stdout, stderr)
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

// compileFile compiles the config with the ids the kernel's table already
// uses, so that the printed table matches the running one.
func compileFile(path string) (*nft.Model, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	k := &nft.Netlink{}
	prev, err := k.ReadIDs(cfg.Daemon.Table)
	if err != nil {
		prev = nil // not root or no nftables: print with fresh ids
	}
	ids, err := nft.AssignIDs(prev, cfg)
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
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	if err := d.Start(); err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	if err := d.Run(context.Background(), sigs); err != nil {
		if errors.Is(err, fwdaemon.ErrSecondSignal) {
			log.Warn("exiting at once on a second signal")
			return 0
		}
		log.Error("stop failed", zap.Error(err))
		return 1
	}
	return 0
}

// reload checks the file first, so a bad file changes nothing and says what
// is wrong, then signals the daemon and waits for its verdict.
func reload(cfgPath, stateDir string, timeout time.Duration, stdout io.Writer) error {
	if _, err := config.Load(cfgPath); err != nil {
		return fmt.Errorf("%w\nreload refused: the running rules are unchanged", err)
	}
	before, err := fwdaemon.ReadState(stateDir)
	if err != nil {
		return fmt.Errorf("is fwdd running? %w", err)
	}
	if err := syscall.Kill(before.PID, syscall.SIGHUP); err != nil {
		return fmt.Errorf("signal fwdd (pid %d): %w", before.PID, err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st, err := fwdaemon.ReadState(stateDir)
		if err == nil && st.Applies > before.Applies {
			if !st.OK {
				return fmt.Errorf("reload failed, the running rules are unchanged: %s", st.Error)
			}
			fmt.Fprintf(stdout, "reloaded: %d forwards\n", st.Forwards)
			warnBlockers(cfgPath, stdout)
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("fwdd (pid %d) did not finish the reload within %s", before.PID, timeout)
}

func status(cfgPath string, jsonOut bool, stdout, stderr io.Writer) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	r, err := fwstatus.Collect(cfg, fwstatus.Sources{})
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
