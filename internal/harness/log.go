package harness

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"
)

// Line is one line of the daemon's output, parsed from zap's console
// format ("TIME\tLEVEL\tMESSAGE\t{fields as JSON}"). A line in another
// format (a panic, a race report) has only Text.
type Line struct {
	N      int       // index in Daemon.Log
	Time   time.Time // when the harness read it
	PID    int       // the process that wrote it
	Level  string    // "DEBUG", "INFO", "WARN", "ERROR", ...
	Msg    string
	Fields map[string]any
	Text   string // the line as written, without the newline
}

func parseLine(text string) Line {
	l := Line{Text: text}
	parts := strings.SplitN(text, "\t", 4)
	if len(parts) < 3 || !isLevel(parts[1]) {
		return l
	}
	l.Level, l.Msg = parts[1], parts[2]
	if len(parts) == 4 {
		_ = json.Unmarshal([]byte(parts[3]), &l.Fields) // a message with a tab: no fields
	}
	return l
}

func isLevel(s string) bool {
	switch s {
	case "DEBUG", "INFO", "WARN", "ERROR", "DPANIC", "PANIC", "FATAL":
		return true
	}
	return false
}

// Str returns a string field ("" if absent or not a string).
func (l Line) Str(key string) string {
	s, _ := l.Fields[key].(string)
	return s
}

// Int returns a number field as an int.
func (l Line) Int(key string) (int, bool) {
	v, ok := l.Fields[key].(float64)
	return int(v), ok
}

// Duration returns a zap duration field ("52.3ms", or seconds as a number).
func (l Line) Duration(key string) (time.Duration, bool) {
	switch v := l.Fields[key].(type) {
	case string:
		d, err := time.ParseDuration(v)
		return d, err == nil
	case float64:
		return time.Duration(v * float64(time.Second)), true
	}
	return 0, false
}

// Strings returns a list-of-strings field.
func (l Line) Strings(key string) []string {
	vs, _ := l.Fields[key].([]any)
	var r []string
	for _, v := range vs {
		if s, ok := v.(string); ok {
			r = append(r, s)
		}
	}
	return r
}

// Notification is one sd_notify(3) message the daemon sent to the
// harness's NOTIFY_SOCKET.
type Notification struct {
	Time time.Time
	PID  int               // the sender, as the kernel reports it
	Vars map[string]string // "READY=1" -> {"READY": "1"}
}

func parseNotification(b []byte) map[string]string {
	vars := map[string]string{}
	for _, l := range bytes.Split(b, []byte("\n")) {
		if k, v, ok := strings.Cut(string(l), "="); ok {
			vars[k] = v
		}
	}
	return vars
}

// lineWriter splits the output of a process into lines.
type lineWriter struct {
	d       *Daemon
	pid     int // set under d.mu once the process runs
	partial []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	now := time.Now()
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		l := parseLine(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
		l.N, l.Time, l.PID = len(w.d.lines), now, w.pid
		w.d.lines = append(w.d.lines, l)
		w.d.wakeLocked()
	}
	return len(b), nil
}
