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

const appliedFile = "applied.toml"

// AppliedPath is the record of the config in force.
func AppliedPath(stateDir string) string { return filepath.Join(stateDir, appliedFile) }

// recordApplied writes the config now in force, as the state is written.
func (d *Daemon) recordApplied(cfg *config.Config) {
	if err := writeStateFile(d.opts.StateDir, appliedFile, "the config in force", cfg.WriteTOML); err != nil {
		d.log.Warn("cannot record the config in force; fwdd diff will not work", zap.Error(err))
	}
}

// ReadApplied decodes the config the daemon has in force.
func ReadApplied(stateDir string) (*config.Config, error) {
	data, err := os.ReadFile(AppliedPath(stateDir))
	if err != nil {
		return nil, fmt.Errorf("read the config in force: %w", err)
	}
	return config.Parse(AppliedPath(stateDir), data)
}
