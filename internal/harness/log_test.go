package harness

import (
	"testing"
	"time"
)

func TestParseLine(t *testing.T) {
	l := parseLine("2026-12-01T21:19:48.123Z\tINFO\treloaded\t{\"numForwards\": 3, \"added\": [\"a\"], \"elapsed\": \"41.2ms\", \"fullReplace\": false}")
	if l.Level != "INFO" || l.Msg != "reloaded" {
		t.Fatalf("%+v", l)
	}
	if n, ok := l.Int("numForwards"); !ok || n != 3 {
		t.Errorf("numForwards %d %v", n, ok)
	}
	if d, ok := l.Duration("elapsed"); !ok || d != 41200*time.Microsecond {
		t.Errorf("elapsed %v %v", d, ok)
	}
	if a := l.Strings("added"); len(a) != 1 || a[0] != "a" {
		t.Errorf("added %v", a)
	}
	for _, text := range []string{"WARNING: DATA RACE", "panic: x\tINFO", ""} {
		if l := parseLine(text); l.Msg != "" || l.Text != text {
			t.Errorf("parseLine(%q) = %+v, want text only", text, l)
		}
	}
	if l := parseLine("T\tWARN\tno fields"); l.Level != "WARN" || l.Msg != "no fields" || l.Fields != nil {
		t.Errorf("%+v", l)
	}
}

func TestParseNotification(t *testing.T) {
	v := parseNotification([]byte("RELOADING=1\nMONOTONIC_USEC=123"))
	if v["RELOADING"] != "1" || v["MONOTONIC_USEC"] != "123" || len(v) != 2 {
		t.Errorf("%v", v)
	}
}
