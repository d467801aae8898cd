package daemon

import (
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/config"
)

// The daemon keeps the configuration it last applied, rendered as one TOML
// file, in its state directory, so that `fwdd diff` can say field by field
// what a reload of the files on disk would change.

// AppliedPath is the record of the config in force.
func AppliedPath(stateDir string) string { return filepath.Join(stateDir, "applied.toml") }

// recordApplied writes the config now in force, atomically.
func (d *Daemon) recordApplied(cfg *config.Config) {
	if err := writeApplied(d.opts.StateDir, cfg); err != nil {
		d.log.Warn("cannot record the config in force; fwdd diff will not work", zap.Error(err))
	}
}

func writeApplied(stateDir string, cfg *config.Config) error {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	tmp := AppliedPath(stateDir) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = cfg.WriteTOML(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, AppliedPath(stateDir))
	}
	return err
}

// ReadApplied decodes the config the daemon has in force.
func ReadApplied(stateDir string) (*config.Config, error) {
	data, err := os.ReadFile(AppliedPath(stateDir))
	if err != nil {
		return nil, fmt.Errorf("read the config in force: %w", err)
	}
	return config.Parse(AppliedPath(stateDir), data)
}
