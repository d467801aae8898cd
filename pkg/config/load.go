package config

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// Load reads and parses the file at path. The file configures what root runs,
// so it is refused, before being read, unless it is a regular file owned by
// root and not writable by group or others.
func Load(path string) (*Config, error) {
	return loadWithOwner(path, 0)
}

// loadWithOwner is Load with the required owner as a parameter, so tests can
// run without root.
func loadWithOwner(path string, wantUID uint32) (*Config, error) {
	data, err := readConfig(path, wantUID)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// readConfig reads the file at path after checking that it is safe to use.
func readConfig(path string, wantUID uint32) ([]byte, error) {
	// O_NONBLOCK so a FIFO planted at path cannot hang the daemon; the mode
	// check below refuses it. Checking the opened file, not the path, leaves
	// no window to swap the file between check and read.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat config: %w", err)
	}
	if err := checkFileSafe(path, fi, wantUID); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return data, nil
}

func checkFileSafe(path string, fi os.FileInfo, wantUID uint32) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot tell who owns the file", path)
	}
	if st.Uid != wantUID {
		want, fix := "root", "root"
		if wantUID != 0 {
			want, fix = fmt.Sprintf("uid %d", wantUID), fmt.Sprint(wantUID)
		}
		return fmt.Errorf("%s: owned by uid %d, not %s; run: chown %s %s", path, st.Uid, want, fix, path)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s: writable by group or others (mode %04o); run: chmod go-w %s", path, perm, path)
	}
	return nil
}
