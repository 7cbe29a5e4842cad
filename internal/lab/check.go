package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Check is one line of _test/checks, umlkit's declarative lab checks:
//
//	ping NODE ADDRESS              NODE reaches ADDRESS (ICMP echo)
//	route NODE PREFIX              NODE's routing table has PREFIX (or default)
//	exec NODE "COMMAND"            COMMAND exits 0 in NODE
//	exec NODE "COMMAND" exit N     ... exits N
//	exec NODE "COMMAND" contains TEXT   ... exits 0 and prints TEXT
//
// A leading '!' expects the opposite ("! ping pc1 10.0.0.9": unreachable).
type Check struct {
	Line     int    `json:"line"`
	Text     string `json:"text"`
	Negate   bool   `json:"negate,omitempty"`
	Kind     string `json:"kind"` // ping, route, exec
	Node     string `json:"node"`
	Target   string `json:"target"` // the address, prefix or command
	Contains string `json:"contains,omitempty"`
	Exit     int    `json:"exit"`
}

// ParseChecks reads a checks file; file names it in errors.
func ParseChecks(file string, data []byte) ([]Check, error) {
	var out []Check
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		perr := func(format string, a ...any) error {
			return &ParseError{File: file, Line: n, Reason: fmt.Sprintf(format, a...)}
		}
		words, err := splitWords(text)
		if err != nil {
			return nil, perr("%v", err)
		}
		c := Check{Line: n, Text: text}
		if len(words) > 0 && words[0] == "!" {
			c.Negate, words = true, words[1:]
		}
		if len(words) < 3 {
			return nil, perr("%q: want ping NODE ADDRESS, route NODE PREFIX or exec NODE \"COMMAND\" [exit N | contains TEXT]", text)
		}
		c.Kind, c.Node, c.Target = words[0], words[1], words[2]
		if !nameRe.MatchString(c.Node) {
			return nil, perr("device name %q: use letters, digits, '_' or '-'", c.Node)
		}
		switch c.Kind {
		case "ping":
			if _, err := netip.ParseAddr(c.Target); err != nil || len(words) != 3 {
				return nil, perr("ping %s %s: want one IP address, such as ping %s 10.0.0.2", c.Node, c.Target, c.Node)
			}
		case "route":
			if c.Target != "default" {
				p, err := netip.ParsePrefix(c.Target)
				if err != nil || len(words) != 3 {
					return nil, perr("route %s %s: want a prefix such as 10.0.2.0/24, or default", c.Node, c.Target)
				}
				c.Target = p.Masked().String()
			}
		case "exec":
			rest := words[3:]
			switch {
			case len(rest) == 0:
			case len(rest) == 2 && rest[0] == "exit":
				e, err := strconv.Atoi(rest[1])
				if err != nil || e < 0 || e > 255 {
					return nil, perr("exit %s: want a status from 0 to 255", rest[1])
				}
				c.Exit = e
			case len(rest) == 2 && rest[0] == "contains":
				c.Contains = rest[1]
			default:
				return nil, perr("%q: after the command, write exit N or contains TEXT (quote TEXT with spaces)", text)
			}
		default:
			return nil, perr("unknown check %q: use ping, route or exec", c.Kind)
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, &ParseError{File: file, Line: n + 1, Reason: err.Error()}
	}
	return out, nil
}

// splitWords splits s into words, honouring "double" and 'single' quotes.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	in := false
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0 && c == q:
			q = 0
		case q != 0:
			cur.WriteByte(c)
		case c == '"' || c == '\'':
			q, in = c, true
		case c == ' ' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if q != 0 {
		return nil, fmt.Errorf("unclosed %c quote", q)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}
