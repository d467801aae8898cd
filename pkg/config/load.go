package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Load reads and parses the file at path and the files of its config
// directory (see Dir). The files configure what root runs, so each is
// refused, before being read, unless it is a regular file owned by root and
// not writable by group or others, in directories of which the same is true
// up to /, as sshd's StrictModes requires. Group-readable files (0640
// root:fwdd) are fine.
func Load(path string) (*Config, error) {
	p := Parser{CacheLimit: -1} // nothing kept
	return p.Load(path)
}

// Dir returns the config directory of the config file at path: forwards may
// also be written in its *.toml files. /etc/fwdd/fwdd.toml has
// /etc/fwdd/fwdd.d, -c /x/lab.toml has /x/lab.d.
func Dir(path string) string {
	return strings.TrimSuffix(path, ".toml") + ".d"
}

// fileRules is who may own the files and directories Load reads.
type fileRules struct {
	uid uint32 // the owner of every file and directory: root
	// top is the last directory checked ("" for /): tests work in a
	// temporary directory that /tmp, writable by all, contains.
	top string
}

var rootOnly = fileRules{uid: 0}

// readConfig reads the config file and the files of its config directory,
// in lexical order, after checking that each is safe to use.
func readConfig(path string, rules fileRules) ([]source, error) {
	budget := MaxFileSize
	text, err := readFile(path, rules, budget)
	if err != nil {
		return nil, err
	}
	srcs := []source{{path: path, text: text}}
	budget -= len(text)

	dir := Dir(path)
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return srcs, nil
	case err != nil:
		return nil, fmt.Errorf("read config directory: %w", err)
	}
	// The directory itself, even empty: whoever can write it can add a file.
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("config directory: %w", err)
	} else if err := checkOwner(dir, fi, rules.uid, "directory "); err != nil {
		return nil, err
	}
	if err := checkDirs(dir, rules); err != nil {
		return nil, err
	}
	for _, e := range entries { // sorted by name
		name := e.Name()
		if !strings.HasSuffix(name, ".toml") || strings.HasPrefix(name, ".") {
			continue
		}
		p := filepath.Join(dir, name)
		text, err := readFile(p, rules, budget)
		if err != nil {
			return nil, err
		}
		srcs = append(srcs, source{path: p, text: text})
		budget -= len(text)
	}
	return srcs, nil
}

// readFile reads the file at path, of at most limit bytes, after checking
// that it and its directories are safe to use.
func readFile(path string, rules fileRules, limit int) (string, error) {
	// O_NONBLOCK so a FIFO planted at path cannot hang the daemon; the mode
	// check below refuses it. Checking the opened file, not the path, leaves
	// no window to swap the file between check and read.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("open config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("stat config: %w", err)
	}
	if err := checkFileSafe(path, fi, rules.uid); err != nil {
		return "", err
	}
	if err := checkDirs(path, rules); err != nil {
		return "", err
	}
	if fi.Size() > int64(limit) {
		return "", fmt.Errorf("%s: the configuration is larger than %d bytes (%d MiB), the limit", path, MaxFileSize, MaxFileSize>>20)
	}
	// Limited still: the file may grow while it is read.
	var b strings.Builder
	b.Grow(int(fi.Size()) + 1)
	if _, err := io.Copy(&b, io.LimitReader(f, int64(limit)+1)); err != nil {
		return "", fmt.Errorf("read config: %w", err)
	}
	if b.Len() > limit {
		return "", fmt.Errorf("%s: the configuration is larger than %d bytes (%d MiB), the limit", path, MaxFileSize, MaxFileSize>>20)
	}
	return b.String(), nil
}

func checkFileSafe(path string, fi os.FileInfo, wantUID uint32) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	return checkOwner(path, fi, wantUID, "")
}

// checkOwner requires fi to be owned by wantUID and not writable by group or
// others. what is "" for a file, "directory " for a directory. A directory
// writable by others with the sticky bit (/tmp) is fine: only the owner of an
// entry can rename or remove it, and the entries on the path below are
// checked to be root's.
func checkOwner(path string, fi os.FileInfo, wantUID uint32, what string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot tell who owns the %s", path, strings.TrimSpace(what+"file"))
	}
	if st.Uid != wantUID {
		want, fix := "root", "root"
		if wantUID != 0 {
			want, fix = fmt.Sprintf("uid %d", wantUID), fmt.Sprint(wantUID)
		}
		return fmt.Errorf("%s: %sowned by uid %d, not %s; run: chown %s %s", path, what, st.Uid, want, fix, path)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 && !(fi.IsDir() && fi.Mode()&os.ModeSticky != 0) {
		return fmt.Errorf("%s: %swritable by group or others (mode %04o); run: chmod go-w %s", path, what, perm, path)
	}
	return nil
}

// checkDirs checks every directory that contains path, up to / (or
// rules.top), and, when path is or goes through a symbolic link, every
// directory that contains its target: whoever can write one of them can
// replace the file.
func checkDirs(path string, rules fileRules) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("config path: %w", err)
	}
	paths := []string{abs}
	if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
		paths = append(paths, real)
	}
	for _, p := range paths {
		for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
			fi, err := os.Stat(dir)
			if err != nil {
				return fmt.Errorf("config directory: %w", err)
			}
			if err := checkOwner(dir, fi, rules.uid, "directory "); err != nil {
				return fmt.Errorf("%w (it contains %s)", err, path)
			}
			if dir == rules.top || dir == filepath.Dir(dir) {
				break
			}
		}
	}
	return nil
}
