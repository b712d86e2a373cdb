package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"testing"
	"time"
)

// logLine is one JSON line of heirloom's log.
type logLine map[string]any

func (l logLine) str(key string) string {
	s, _ := l[key].(string)
	return s
}

// logMark is a position in an instance's log: waitLog reads what was logged after it.
type logMark struct {
	h      *instance
	offset int64
}

// mark returns the current end of the instance's log.
func (h *instance) mark(t testing.TB) logMark {
	t.Helper()
	info, err := os.Stat(h.logPath)
	if err != nil {
		t.Fatalf("reading heirloom's log: %v", err)
	}
	return logMark{h: h, offset: info.Size()}
}

// lines returns the JSON lines logged after the mark (lines that are not JSON are left out).
func (m logMark) lines(t testing.TB) []logLine {
	t.Helper()
	f, err := os.Open(m.h.logPath)
	if err != nil {
		t.Fatalf("reading heirloom's log: %v", err)
	}
	defer f.Close()
	if _, err = f.Seek(m.offset, io.SeekStart); err != nil {
		t.Fatalf("reading heirloom's log: %v", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("reading heirloom's log: %v", err)
	}
	var out []logLine
	for _, raw := range bytes.Split(data, []byte("\n")) {
		var l logLine
		if len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// find returns the first line after the mark that match accepts.
func (m logMark) find(t testing.TB, match func(logLine) bool) (logLine, bool) {
	t.Helper()
	for _, l := range m.lines(t) {
		if match(l) {
			return l, true
		}
	}
	return nil, false
}

// wait waits until a line after the mark matches.
func (m logMark) wait(t testing.TB, timeout time.Duration, what string, match func(logLine) bool) logLine {
	t.Helper()
	var found logLine
	eventually(t, timeout, what+" in heirloom's log", func() (bool, string) {
		l, ok := m.find(t, match)
		found = l
		return ok, fmt.Sprintf("not logged after offset %d of %s", m.offset, m.h.logPath)
	})
	return found
}

// msgIs matches log lines with this message and these string fields.
func msgIs(message string, fields ...string) func(logLine) bool {
	return func(l logLine) bool {
		if l.str("message") != message {
			return false
		}
		for i := 0; i+1 < len(fields); i += 2 {
			if l.str(fields[i]) != fields[i+1] {
				return false
			}
		}
		return true
	}
}
