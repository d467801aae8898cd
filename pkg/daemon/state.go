package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// DefaultStateDir holds the daemon's record of its latest apply, read by
// `fwdd reload` to wait until a reload is done (systemd: RuntimeDirectory).
const DefaultStateDir = "/run/fwdd"

// State is the record of the daemon's latest apply.
type State struct {
	PID      int       `json:"pid"`
	Applies  uint64    `json:"applies"` // start counts as the first
	OK       bool      `json:"ok"`
	Error    string    `json:"error,omitempty"`
	Forwards int       `json:"forwards"`
	Time     time.Time `json:"time"`
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

// WriteState records st in dir atomically.
func WriteState(dir string, st State) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := statePath(dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, statePath(dir)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// ReadState reads the record the daemon keeps in dir.
func ReadState(dir string) (State, error) {
	var st State
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return st, fmt.Errorf("read daemon state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read daemon state %s: %w", statePath(dir), err)
	}
	return st, nil
}
