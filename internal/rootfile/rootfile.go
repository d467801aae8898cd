// Package rootfile reads files that root acts on, after checking that no one
// but their owner could have written them: the file, every directory above
// it and, through a symbolic link, every directory above its target, as
// sshd's StrictModes does. It is written by hand because no well-kept Go
// library makes this check.
package rootfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Rules is who may own the files and directories checked.
type Rules struct {
	UID uint32 // the owner of every file and directory: root
	// Top is the last directory checked ("" for /): tests work in a
	// temporary directory that /tmp, writable by all, contains.
	Top string
}

// Root is the rules for what root runs: everything owned by root, up to /.
var Root = Rules{UID: 0}

// ErrTooLarge is returned, wrapped, by Read for a file over its limit.
var ErrTooLarge = errors.New("larger than the limit")

// Read reads the file at path, of at most limit bytes, after checking that
// it is a regular file and that it and its directories are safe to use.
func Read(path string, r Rules, limit int) (string, error) {
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
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if err := checkOwner(path, fi, r.UID, ""); err != nil {
		return "", err
	}
	if err := checkDirs(path, r); err != nil {
		return "", err
	}
	if fi.Size() > int64(limit) {
		return "", fmt.Errorf("%s: %w", path, ErrTooLarge)
	}
	// Limited still: the file may grow while it is read.
	var b strings.Builder
	b.Grow(int(fi.Size()) + 1)
	if _, err := io.Copy(&b, io.LimitReader(f, int64(limit)+1)); err != nil {
		return "", fmt.Errorf("read config: %w", err)
	}
	if b.Len() > limit {
		return "", fmt.Errorf("%s: %w", path, ErrTooLarge)
	}
	return b.String(), nil
}

// CheckDir checks the directory dir and every directory above it: whoever
// can write dir, even empty, can add a file to it.
func CheckDir(dir string, r Rules) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("config directory: %w", err)
	}
	if err := checkOwner(dir, fi, r.UID, "directory "); err != nil {
		return err
	}
	return checkDirs(dir, r)
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

// checkDirs checks every directory that contains path, up to / (or r.Top),
// and, when path is or goes through a symbolic link, every directory that
// contains its target: whoever can write one of them can replace the file.
func checkDirs(path string, r Rules) error {
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
			if err := checkOwner(dir, fi, r.UID, "directory "); err != nil {
				return fmt.Errorf("%w (it contains %s)", err, path)
			}
			if dir == r.Top || dir == filepath.Dir(dir) {
				break
			}
		}
	}
	return nil
}
