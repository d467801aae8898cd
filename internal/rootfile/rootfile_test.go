package rootfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const text = "[daemon]\ntable = \"t\"\n"

// mkfile writes a file of the given mode under dir, making its directories.
func mkfile(t *testing.T, dir, rel string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// Chmod, not WriteFile's mode, so umask does not interfere.
	chmod(t, path, mode)
	return path
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// mine are the rules for a test's files: owned by the user running the
// test, in directories up to the test's temporary directory.
func mine(top string) Rules { return Rules{UID: uint32(os.Getuid()), Top: top} }

func itoa(u uint32) string { return strconv.Itoa(int(u)) }

func TestRead(t *testing.T) {
	me := uint32(os.Getuid())
	tests := []struct {
		name    string
		mode    os.FileMode
		owner   uint32
		wantErr string // "" = success
	}{
		{name: "ok", mode: 0o644, owner: me},
		{name: "owner read only", mode: 0o400, owner: me},
		{name: "group writable", mode: 0o664, owner: me, wantErr: "writable by group or others (mode 0664); run: chmod go-w "},
		{name: "world writable", mode: 0o602, owner: me, wantErr: "writable by group or others (mode 0602)"},
		{name: "other owner", mode: 0o644, owner: me + 1, wantErr: "owned by uid " + itoa(me) + ", not "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top := t.TempDir()
			path := mkfile(t, top, "fwdd.toml", tt.mode)
			got, err := Read(path, Rules{UID: tt.owner, Top: top}, 1<<20)
			if tt.wantErr == "" {
				if err != nil || got != text {
					t.Fatalf("Read = %q, %v, want %q", got, err, text)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), path+": ") {
				t.Fatalf("Read error = %v, want %s: ...%q", err, path, tt.wantErr)
			}
		})
	}
}

func TestReadMessages(t *testing.T) {
	path := mkfile(t, t.TempDir(), "fwdd.toml", 0o664)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// As root would see it: the fixes are spelled out.
	err = checkOwner("/etc/fwdd/fwdd.toml", fi, uint32(os.Getuid()), "")
	if want := "/etc/fwdd/fwdd.toml: writable by group or others (mode 0664); run: chmod go-w /etc/fwdd/fwdd.toml"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}

	owner := os.Getuid()
	if owner == 0 {
		// Running as root: give the file away to see the message.
		owner = 1000
		if err := os.Chown(path, owner, -1); err != nil {
			t.Fatal(err)
		}
		if fi, err = os.Stat(path); err != nil {
			t.Fatal(err)
		}
	}
	err = checkOwner("/etc/fwdd/fwdd.toml", fi, 0, "")
	want := "/etc/fwdd/fwdd.toml: owned by uid " + strconv.Itoa(owner) + ", not root; run: chown root /etc/fwdd/fwdd.toml"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestReadNotRegular(t *testing.T) {
	dir := t.TempDir()
	_, err := Read(dir, mine(filepath.Dir(dir)), 1<<20)
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("got %v, want not a regular file", err)
	}
	// A FIFO no one writes to: opened without blocking, then refused.
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Read(fifo, mine(dir), 1<<20)
	if want := fifo + ": not a regular file (p---------)"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	_, err = Read(filepath.Join(dir, "missing.toml"), mine(dir), 1<<20)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

// TestReadDirectories checks the directories that contain the file, as
// sshd's StrictModes does.
func TestReadDirectories(t *testing.T) {
	top := t.TempDir()
	rules := mine(top)
	read := func(path string) error {
		_, err := Read(path, rules, 1<<20)
		return err
	}

	// Group-readable for the fwdd user's group: fine.
	ok := mkfile(t, top, "ok/fwdd.toml", 0o640)
	chmod(t, filepath.Dir(ok), 0o750)
	if err := read(ok); err != nil {
		t.Errorf("0640 file in a 0750 directory: %v", err)
	}

	open := mkfile(t, top, "open/fwdd.toml", 0o644)
	chmod(t, filepath.Dir(open), 0o777)
	want := filepath.Dir(open) + ": directory writable by group or others (mode 0777); run: chmod go-w " + filepath.Dir(open)
	if err := read(open); err == nil || err.Error() != want+" (it contains "+open+")" {
		t.Errorf("0777 directory: %v, want %s (it contains %s)", err, want, open)
	}
	if err := CheckDir(filepath.Dir(open), rules); err == nil || err.Error() != want {
		t.Errorf("CheckDir of a 0777 directory: %v, want %s", err, want)
	}
	chmod(t, filepath.Dir(open), 0o777|os.ModeSticky)
	if err := read(open); err != nil {
		t.Errorf("sticky directory (like /tmp): %v", err)
	}

	deep := mkfile(t, top, "up/a/b/fwdd.toml", 0o644)
	chmod(t, filepath.Join(top, "up"), 0o775)
	if err := read(deep); err == nil || !strings.HasPrefix(err.Error(), filepath.Join(top, "up")+": directory writable by group or others (mode 0775)") {
		t.Errorf("group-writable ancestor: %v", err)
	}

	target := mkfile(t, top, "unsafe/real.toml", 0o644)
	chmod(t, filepath.Dir(target), 0o777)
	link := filepath.Join(top, "safe", "fwdd.toml")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := read(link); err == nil || !strings.HasPrefix(err.Error(), filepath.Dir(target)+": directory writable by group or others") {
		t.Errorf("symlink into a writable directory: %v", err)
	}

	other := Rules{UID: rules.UID + 1, Top: top}
	err := checkDirs(ok, other)
	want = filepath.Dir(ok) + ": directory owned by uid " + itoa(rules.UID) + ", not uid " + itoa(other.UID) + "; run: chown " + itoa(other.UID) + " " + filepath.Dir(ok)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("directory of another owner: %v, want %s", err, want)
	}
}
