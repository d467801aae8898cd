package daemon

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/fwdd/fwdd/pkg/config"
)

// The daemon keeps the text of the config it last applied in its state
// directory, so that `fwdd diff` can say field by field what a reload of
// the file on disk would change.

// AppliedPath is the copy of the config in force.
func AppliedPath(stateDir string) string { return filepath.Join(stateDir, "applied.toml") }

// load reads and decodes the config file, returning its text too.
func (d *Daemon) load() (*config.Config, []byte, error) {
	data, err := config.ReadFile(d.opts.ConfigPath)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := d.parser.Parse(d.opts.ConfigPath, data)
	return cfg, data, err
}

// recordApplied writes the text of the config now in force, atomically.
func (d *Daemon) recordApplied(data []byte) error {
	if err := os.MkdirAll(d.opts.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	tmp := AppliedPath(d.opts.StateDir) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("record applied config: %w", err)
	}
	if err := os.Rename(tmp, AppliedPath(d.opts.StateDir)); err != nil {
		return fmt.Errorf("record applied config: %w", err)
	}
	return nil
}

// ReadApplied decodes the config the daemon has in force.
func ReadApplied(stateDir string) (*config.Config, error) {
	data, err := os.ReadFile(AppliedPath(stateDir))
	if err != nil {
		return nil, fmt.Errorf("read the config in force: %w", err)
	}
	return config.Parse(AppliedPath(stateDir), data)
}
