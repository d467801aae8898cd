package logging

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestJournalLines(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "8:1234")
	var buf bytes.Buffer
	log := New(&buf, zap.NewAtomicLevelAt(zapcore.InfoLevel))
	log.Info("forwarding", zap.Int("numForwards", 3))
	log.Warn("conntrack table filling up", zap.Int("percent", 81))
	log.Error("reload failed")
	log.Debug("hidden")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{"<6> forwarding", "<4> conntrack table filling up", "<3> reload failed"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d: %q, want prefix %q (priority first, no timestamp)", i, lines[i], w)
		}
	}
	if !strings.Contains(lines[0], `{"numForwards": 3}`) {
		t.Errorf("structured fields missing: %q", lines[0])
	}
}

func TestTerminalLines(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	var buf bytes.Buffer
	New(&buf, zap.NewAtomicLevelAt(zapcore.InfoLevel)).Info("forwarding")
	if line := buf.String(); !strings.Contains(line, "INFO\tforwarding") || strings.HasPrefix(line, "<") {
		t.Errorf("terminal line %q: want a timestamp and a level word", line)
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]zapcore.Level{"": zapcore.InfoLevel, "debug": zapcore.DebugLevel, "warn": zapcore.WarnLevel, "error": zapcore.ErrorLevel} {
		got, err := ParseLevel(in)
		if err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("ParseLevel accepted \"loud\"")
	}
}
