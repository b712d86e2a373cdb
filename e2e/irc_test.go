package e2e

// A small IRC client speaking raw IRC (RFC 1459/2812 lines) to the tests' ngircd: it registers
// (NICK/USER), joins channels, sends PRIVMSG, answers PING with PONG, and waits for a specific
// line with a deadline. Every line it receives is kept, so a wait never misses a line that
// arrived before it started.

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// ircMessage is one parsed IRC line: [@tags] [:prefix] COMMAND params... [:trailing].
type ircMessage struct {
	Raw     string
	Prefix  string
	Command string
	Params  []string
}

// Nick is the nickname of the prefix (nick!user@host), or the prefix itself.
func (m ircMessage) Nick() string {
	nick, _, _ := strings.Cut(m.Prefix, "!")
	return nick
}

// Trailing is the last parameter (the text of a PRIVMSG), or "".
func (m ircMessage) Trailing() string {
	if len(m.Params) == 0 {
		return ""
	}
	return m.Params[len(m.Params)-1]
}

func parseIRC(line string) ircMessage {
	m := ircMessage{Raw: line}
	rest := line
	if strings.HasPrefix(rest, "@") {
		_, rest, _ = strings.Cut(rest, " ")
	}
	if strings.HasPrefix(rest, ":") {
		m.Prefix, rest, _ = strings.Cut(rest[1:], " ")
	}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ")
		if strings.HasPrefix(rest, ":") {
			m.Params = append(m.Params, rest[1:])
			break
		}
		var word string
		word, rest, _ = strings.Cut(rest, " ")
		if word == "" {
			continue
		}
		if m.Command == "" {
			m.Command = strings.ToUpper(word)
		} else {
			m.Params = append(m.Params, word)
		}
	}
	return m
}

type ircClient struct {
	t    testing.TB
	Nick string
	conn net.Conn

	writeMu sync.Mutex

	mu      sync.Mutex
	lines   []ircMessage
	cursor  int           // expect() looks at lines from here on
	changed chan struct{} // closed (and replaced) when a line arrives or reading ends
	readErr error
}

// dialIRC connects to addr, registers as nick and waits for the server's welcome (001). The
// connection is closed (with QUIT) when the test ends.
func dialIRC(t testing.TB, addr, nick string) *ircClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("connecting to IRC server %s: %v", addr, err)
	}
	c := &ircClient{t: t, Nick: nick, conn: conn, changed: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	c.Send("NICK " + nick)
	c.Send(fmt.Sprintf("USER %s 0 * :heirloom test user %s", nick, nick))
	c.Expect(15*time.Second, "the welcome (001) for "+nick, func(m ircMessage) bool { return m.Command == "001" })
	return c
}

func (c *ircClient) read() {
	sc := bufio.NewScanner(c.conn)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		m := parseIRC(strings.TrimRight(sc.Text(), "\r"))
		if m.Command == "PING" {
			c.sendRaw("PONG :" + m.Trailing())
		}
		c.mu.Lock()
		c.lines = append(c.lines, m)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.readErr = sc.Err()
	if c.readErr == nil {
		c.readErr = fmt.Errorf("connection closed by the server")
	}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *ircClient) sendRaw(line string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.conn.Write([]byte(line + "\r\n"))
	return err
}

// Send writes one raw line (without CR LF).
func (c *ircClient) Send(line string) {
	c.t.Helper()
	if strings.ContainsAny(line, "\r\n") {
		c.t.Fatalf("IRC line %q contains a line break", line)
	}
	if err := c.sendRaw(line); err != nil {
		c.t.Fatalf("sending %q to IRC: %v", line, err)
	}
}

// Expect waits until a line from the cursor on matches, moves the cursor past it and returns
// it. On timeout the test fails with the lines seen.
func (c *ircClient) Expect(timeout time.Duration, what string, match func(ircMessage) bool) ircMessage {
	c.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		for i := c.cursor; i < len(c.lines); i++ {
			if match(c.lines[i]) {
				c.cursor = i + 1
				m := c.lines[i]
				c.mu.Unlock()
				return m
			}
		}
		changed, readErr := c.changed, c.readErr
		c.mu.Unlock()
		if readErr != nil {
			c.t.Fatalf("IRC %s: waiting for %s: %v\n%s", c.Nick, what, readErr, c.recent())
		}
		select {
		case <-changed:
		case <-deadline.C:
			c.t.Fatalf("IRC %s: timed out after %s waiting for %s\n%s", c.Nick, timeout, what, c.recent())
		}
	}
}

// recent returns the last lines received, for failure messages.
func (c *ircClient) recent() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	from := max(0, len(c.lines)-25)
	var sb strings.Builder
	fmt.Fprintf(&sb, "--- last %d of %d IRC lines received by %s ---\n", len(c.lines)-from, len(c.lines), c.Nick)
	for _, m := range c.lines[from:] {
		sb.WriteString(m.Raw)
		sb.WriteByte('\n')
	}
	return sb.String()
}

// Join joins channel and waits for the end of its names list (366).
func (c *ircClient) Join(channel string) {
	c.t.Helper()
	c.Send("JOIN " + channel)
	c.Expect(15*time.Second, "the end of names of "+channel, func(m ircMessage) bool {
		return m.Command == "366" && len(m.Params) >= 2 && strings.EqualFold(m.Params[1], channel)
	})
}

// Privmsg sends text to a channel or nick.
func (c *ircClient) Privmsg(target, text string) {
	c.t.Helper()
	c.Send(fmt.Sprintf("PRIVMSG %s :%s", target, text))
}

// ExpectPrivmsg waits for a PRIVMSG from nick to target with exactly text.
func (c *ircClient) ExpectPrivmsg(timeout time.Duration, from, target, text string) ircMessage {
	c.t.Helper()
	return c.Expect(timeout, fmt.Sprintf("PRIVMSG %s from %s: %q", target, from, text), func(m ircMessage) bool {
		return m.Command == "PRIVMSG" && strings.EqualFold(m.Nick(), from) && len(m.Params) == 2 &&
			strings.EqualFold(m.Params[0], target) && m.Params[1] == text
	})
}

func (c *ircClient) close() {
	_ = c.sendRaw("QUIT :test over")
	_ = c.conn.Close()
}

func TestParseIRC(t *testing.T) {
	for _, tc := range []struct {
		line    string
		prefix  string
		command string
		params  []string
	}{
		{":mx!~mx@127.0.0.1 PRIVMSG #chan :hello there", "mx!~mx@127.0.0.1", "PRIVMSG", []string{"#chan", "hello there"}},
		{"PING :irc.heirloom.test", "", "PING", []string{"irc.heirloom.test"}},
		{":irc.heirloom.test 366 nick #chan :End of NAMES list", "irc.heirloom.test", "366", []string{"nick", "#chan", "End of NAMES list"}},
		{"@time=2026-01-01T00:00:00Z :a!b@c join #x", "a!b@c", "JOIN", []string{"#x"}},
		{":a!b@c PRIVMSG #x ::-) colon", "a!b@c", "PRIVMSG", []string{"#x", ":-) colon"}},
	} {
		m := parseIRC(tc.line)
		if m.Prefix != tc.prefix || m.Command != tc.command || strings.Join(m.Params, "|") != strings.Join(tc.params, "|") {
			t.Errorf("parseIRC(%q) = prefix %q command %q params %q; want %q %q %q", tc.line, m.Prefix, m.Command, m.Params, tc.prefix, tc.command, tc.params)
		}
	}
	if n := parseIRC(":mx!~mx@h PRIVMSG #c :x").Nick(); n != "mx" {
		t.Errorf("Nick() = %q, want mx", n)
	}
}
