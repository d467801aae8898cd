package main

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// commandsAndFlags lists fwdd's commands (from the usage text) and flags
// (from the flag set's own help).
func commandsAndFlags(t *testing.T) (cmds, flags []string) {
	t.Helper()
	_, list, _ := strings.Cut(usage, "commands:\n")
	list, _, _ = strings.Cut(list, "\n\n")
	for _, m := range regexp.MustCompile(`(?m)^  ([a-z]+) `).FindAllStringSubmatch(list, -1) {
		cmds = append(cmds, m[1]) // deeper-indented lines continue a description
	}
	var stderr bytes.Buffer
	run([]string{"version", "-h"}, &bytes.Buffer{}, &stderr)
	for _, m := range regexp.MustCompile(`(?m)^  -(\S+)`).FindAllStringSubmatch(stderr.String(), -1) {
		if len(m[1]) == 1 {
			flags = append(flags, "-"+m[1])
		} else {
			flags = append(flags, "--"+m[1])
		}
	}
	if len(cmds) < 5 || len(flags) < 3 {
		t.Fatalf("found commands %v and flags %v: usage or flag help changed shape", cmds, flags)
	}
	return cmds, flags
}

// TestManPageAndCompletionKnowEveryCommand: fwdd(8) describes, and bash
// completion offers, every command and flag.
func TestManPageAndCompletionKnowEveryCommand(t *testing.T) {
	man, err := os.ReadFile("../../docs/fwdd.8.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds, flags := commandsAndFlags(t)
	for _, c := range cmds {
		if !regexp.MustCompile(`(?m)^\*\*` + c + `\*\*`).Match(man) {
			t.Errorf("fwdd.8.md has no entry for the command %q", c)
		}
		if got := complete(t, "fwdd", c[:2]); !strings.Contains(" "+got+" ", " "+c+" ") {
			t.Errorf("completing %q offers %q, not %q", c[:2], got, c)
		}
	}
	for _, f := range flags {
		if !bytes.Contains(man, []byte("**"+f+"**")) {
			t.Errorf("fwdd.8.md does not describe the flag %s", f)
		}
		if got := complete(t, "fwdd", "check", f[:2]); !strings.Contains(" "+got+" ", " "+f+" ") {
			t.Errorf("completing %q after a command offers %q, not %q", f[:2], got, f)
		}
	}
	if got := complete(t, "fwdd", "reload", "-c", ""); got != "FILEDIR toml" {
		t.Errorf("completing -c's argument: %q, want toml files", got)
	}
}

// complete runs the bash completion function on words (the last being the
// word under the cursor) and returns its candidates. bash-completion's
// helpers are stubbed: _init_completion splits the words as it would,
// _filedir names what it would list.
func complete(t *testing.T, words ...string) string {
	t.Helper()
	script := `
_init_completion() { words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; cur=${words[cword]}; prev=${words[cword-1]}; }
_filedir() { COMPREPLY=("FILEDIR $*"); }
source ../../deploy/bash-completion/fwdd
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_fwdd
echo "${COMPREPLY[*]}"
`
	out, err := exec.Command("bash", append([]string{"-c", script, "bash"}, words...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("bash completion: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}
