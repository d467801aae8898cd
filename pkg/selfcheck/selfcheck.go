// Package selfcheck answers, cheaply, "is fwdd forwarding as configured on this
// node?" for keepalived's track_script: fwdd's table is in the kernel with
// the content the config in force gives, and the daemon that owns it is
// alive. It reads the table's chains, rules and sets and a bounded
// number of its elements by key (MaxVerified), the daemon's state file and
// its record of the config in force: no conntrack dump, and a cost that does
// not grow with the table.
package selfcheck

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/daemon"
	"github.com/fwdd/fwdd/pkg/nft"
)

// Exit codes of `fwdd health` (2 is a usage error, as for every command).
const (
	OK            = 0
	ConfigInvalid = 1 // the config file cannot be loaded
	TableAbsent   = 3 // fwdd's table is not in the kernel
	TableDiffers  = 4 // the table is not what the config compiles to (edited, foreign, or a reload failed)
	DaemonDown    = 5 // no fwdd daemon runs for this state directory
)

// Result is the verdict: Code is one of the exit codes, Message says why.
type Result struct {
	Code    int
	Message string
}

// Options say where to look; zero values mean this host's defaults.
type Options struct {
	ConfigPath string
	StateDir   string
	Kernel     *nft.Netlink
	// Proc is the proc file system (default /proc), to check the daemon's PID.
	Proc string
}

// Check runs the checks in order and returns the first failure.
func Check(o Options) Result {
	if o.Kernel == nil {
		o.Kernel = &nft.Netlink{}
	}
	if o.StateDir == "" {
		o.StateDir = daemon.DefaultStateDir
	}
	if o.Proc == "" {
		o.Proc = "/proc"
	}
	file, fileErr := config.Load(o.ConfigPath)
	cfg, note, err := inForce(o.ConfigPath, file, fileErr, o.StateDir)
	if err != nil {
		return Result{ConfigInvalid, err.Error()}
	}
	table := "inet " + cfg.Daemon.Table
	present, err := o.Kernel.TableExists(cfg.Daemon.Table)
	if err != nil {
		return Result{TableAbsent, fmt.Sprintf("read nftables: %v", err)}
	}
	if !present {
		return Result{TableAbsent, fmt.Sprintf("table %s is not in the kernel", table)}
	}
	ids, err := nft.AssignIDs(cfg)
	if err != nil {
		return Result{ConfigInvalid, err.Error()}
	}
	m, err := nft.Compile(cfg, ids)
	if err != nil {
		return Result{ConfigInvalid, fmt.Sprintf("compile table: %v", err)}
	}
	st, stErr := daemon.ReadState(o.StateDir)
	if stErr == nil {
		// Backends the daemon found down are out of the kernel.
		m = daemon.WithHealth(m, st.Backends)
		if !st.OK {
			note += "; the daemon's last apply failed: " + st.Error
		}
	}
	if err := o.Kernel.VerifyByKey(m, sample(cfg.Forwards, MaxVerified)); err != nil {
		return Result{TableDiffers, fmt.Sprintf("table %s differs from %s: %v%s", table, cfg.Path, err, note)}
	}
	if stErr != nil {
		return Result{DaemonDown, fmt.Sprintf("no daemon: %v", stErr)}
	}
	if err := alive(o.Proc, st.PID); err != nil {
		return Result{DaemonDown, fmt.Sprintf("daemon (pid %d, from %s): %v", st.PID, o.StateDir, err)}
	}
	return Result{OK, fmt.Sprintf("ok: table %s matches %s (%d forwards), daemon pid %d%s", table, cfg.Path, len(cfg.Forwards), st.PID, note)}
}

// MaxVerified is how many forwards' elements one check reads by key: all
// of them up to this many, else this many picked at random, so that what a
// check every second asks of the kernel does not grow with the table (a
// read of every element took it 12 s at 100,000 forwards: a set dump is
// quadratic). The rest is covered by what is checked whole (the chains,
// rules and sets, and the config in force against the file) and by the
// daemon, which watches its table's events and repairs it.
const MaxVerified = 1000

// sample returns the names of all the forwards, or of n picked at random.
func sample(fwds []config.Forward, n int) []string {
	names := make([]string, len(fwds))
	for i := range fwds {
		names[i] = fwds[i].Name
	}
	if len(names) <= n {
		return names
	}
	for i := range n { // a partial Fisher-Yates shuffle
		j := i + rand.IntN(len(names)-i)
		names[i], names[j] = names[j], names[i]
	}
	return names[:n]
}

// inForce returns the config the daemon has in force, which is what the
// node is checked against, and a note when the file says otherwise. A file
// edited but not reloaded yet, even an invalid one, is no fault of the
// node: it forwards what is in force, and failing it over would move the
// VIPs to a peer whose file was most likely edited the same way. The file
// is the config in force when cfg.WriteTOML gives the bytes of the daemon's
// record (applied.toml), which spares parsing the record too. Without a
// record (no daemon has applied a config with this state directory) the
// file is all there is. file and fileErr are what loading path gave.
func inForce(path string, file *config.Config, fileErr error, stateDir string) (*config.Config, string, error) {
	record, err := os.ReadFile(daemon.AppliedPath(stateDir))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return file, "", fileErr
	case err != nil:
		return nil, "", fmt.Errorf("read the config in force: %w", err)
	}
	if fileErr == nil {
		h := sha256.New()
		if err := file.WriteTOML(h); err != nil {
			return nil, "", err
		}
		if sha256.Sum256(record) == [sha256.Size]byte(h.Sum(nil)) {
			return file, "", nil
		}
	}
	cfg, err := config.Parse(daemon.AppliedPath(stateDir), record)
	if err != nil {
		return nil, "", fmt.Errorf("parse the config in force: %w", err)
	}
	if fileErr != nil {
		return cfg, fmt.Sprintf("; %s is not valid (fwdd check -c %s says why): the daemon keeps the config in force", path, path), nil
	}
	return cfg, fmt.Sprintf("; %s is not the config in force: reload it (fwdd diff -c %s shows what changes)", path, path), nil
}

// alive checks that pid runs and is an fwdd process (not a reused PID).
func alive(proc string, pid int) error {
	if pid <= 0 {
		return errors.New("no pid recorded")
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return errors.New("not running")
	}
	comm, err := os.ReadFile(filepath.Join(proc, fmt.Sprint(pid), "comm"))
	if err != nil {
		return fmt.Errorf("not running: %w", err)
	}
	if name := strings.TrimSpace(string(comm)); name != "fwdd" {
		return fmt.Errorf("pid is %q, not fwdd", name)
	}
	// A daemon that died stays a zombie, with its name, until its parent
	// reaps it; the state is the field after the name's closing ')'.
	stat, err := os.ReadFile(filepath.Join(proc, fmt.Sprint(pid), "stat"))
	if err != nil {
		return fmt.Errorf("not running: %w", err)
	}
	if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && (f[0] == "Z" || f[0] == "X") {
		return errors.New("exited (not reaped yet)")
	}
	return nil
}
