package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// Under systemd, a refused reload's reason must reach the journal as an
// error: when stderr is the journal stream, every line carries <3>.
func TestPrintErrJournalPriority(t *testing.T) {
	for _, tt := range []struct {
		name    string
		journal bool
		want    string
	}{
		{"terminal", false, "a.toml:3: bad\nreload refused\n"},
		{"journal stream", true, "<3>a.toml:3: bad\n<3>reload refused\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			// fd 2 itself, as the journal check looks at fd 2.
			saved, err := unix.Dup(2)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Dup2(int(w.Fd()), 2); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = unix.Dup2(saved, 2); unix.Close(saved) }()
			t.Setenv("JOURNAL_STREAM", "")
			if tt.journal {
				var s unix.Stat_t
				if err := unix.Fstat(int(w.Fd()), &s); err != nil {
					t.Fatal(err)
				}
				t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", s.Dev, s.Ino))
			}
			printErr(os.Stderr, errors.New("a.toml:3: bad\nreload refused"))
			w.Close()
			_ = unix.Dup2(saved, 2)
			got, _ := io.ReadAll(r)
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
