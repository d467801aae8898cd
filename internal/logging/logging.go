// Package logging builds fwdd's zap logger: journald-friendly lines under
// systemd, readable console lines on a terminal.
package logging

import (
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// journalLevel prefixes each line with its syslog priority ("<3>" for
// errors), which journald reads from a service's stdout, so that
// `journalctl -u fwdd -p warning` works. Timestamps are left to journald.
func journalLevel(l zapcore.Level, enc zapcore.PrimitiveArrayEncoder) {
	prio := map[zapcore.Level]int{
		zapcore.DebugLevel: 7, zapcore.InfoLevel: 6, zapcore.WarnLevel: 4,
		zapcore.ErrorLevel: 3, zapcore.DPanicLevel: 2, zapcore.PanicLevel: 2, zapcore.FatalLevel: 2,
	}[l]
	enc.AppendString(fmt.Sprintf("<%d>", prio))
}

// ParseLevel turns a config log level into a zap level.
func ParseLevel(s string) (zapcore.Level, error) {
	var l zapcore.Level
	if s == "" {
		return zapcore.InfoLevel, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log level %q: %w", s, err)
	}
	return l, nil
}

// New returns a logger writing to w at the given level. Under systemd
// (JOURNAL_STREAM set) lines carry a priority prefix and no timestamp.
func New(w io.Writer, level zap.AtomicLevel) *zap.Logger {
	cfg := zap.NewDevelopmentEncoderConfig()
	cfg.EncodeLevel = zapcore.CapitalLevelEncoder
	cfg.CallerKey = ""
	cfg.StacktraceKey = ""
	if os.Getenv("JOURNAL_STREAM") != "" {
		cfg.TimeKey = ""
		cfg.EncodeLevel = journalLevel
		cfg.ConsoleSeparator = " "
	}
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(cfg), zapcore.AddSync(w), level)
	return zap.New(core)
}
