package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/fwdd/fwdd/internal/rootfile"
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

// readConfig reads the config file and the files of its config directory,
// in lexical order, after checking that each is safe to use, within
// MaxFileSize bytes in all.
func readConfig(path string, rules rootfile.Rules) ([]source, error) {
	var srcs []source
	budget := MaxFileSize
	read := func(file string) error {
		text, err := rootfile.Read(file, rules, budget)
		if errors.Is(err, rootfile.ErrTooLarge) {
			return fmt.Errorf("%s: the configuration is larger than %d bytes (%d MiB), the limit", file, MaxFileSize, MaxFileSize>>20)
		} else if err != nil {
			return err
		}
		srcs = append(srcs, source{path: file, text: text})
		budget -= len(text)
		return nil
	}
	if err := read(path); err != nil {
		return nil, err
	}
	dir := Dir(path)
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return srcs, nil
	case err != nil:
		return nil, fmt.Errorf("read config directory: %w", err)
	}
	if err := rootfile.CheckDir(dir, rules); err != nil {
		return nil, err
	}
	for _, e := range entries { // sorted by name
		name := e.Name()
		if !strings.HasSuffix(name, ".toml") || strings.HasPrefix(name, ".") {
			continue
		}
		if err := read(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	return srcs, nil
}
