package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sync"
	"testing"
)

// BinEnv names an environment variable that, when set, gives the fwdd
// binary to use instead of building one (e.g. FWDD_BIN=$PWD/bin/fwdd).
const BinEnv = "FWDD_BIN"

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Binary returns the fwdd binary the harness starts: $FWDD_BIN if set,
// otherwise ./cmd/fwdd of this module built once per process into a
// temporary directory, with -race when the calling program was built with
// -race (so tests check the daemon for data races too). The build runs
// `go build` by import path, so the working directory must be inside the
// module (as it is for `go test`). Test packages remove the build in
// TestMain with [Main].
func Binary() (string, error) {
	built.once.Do(func() {
		if p := os.Getenv(BinEnv); p != "" {
			built.path, built.err = filepath.Abs(p)
			return
		}
		built.dir, built.err = os.MkdirTemp("", "fwdd-harness-bin-")
		if built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "fwdd")
		args := []string{"build", "-o", built.path}
		if raceBuild() {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "github.com/fwdd/fwdd/cmd/fwdd")...).CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build fwdd: %w: %s", err, out)
		}
	})
	return built.path, built.err
}

// raceBuild reports whether this program was built with -race.
func raceBuild() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// Main runs the tests and then removes the binary Binary built:
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	return code
}
