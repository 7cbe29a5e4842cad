package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// ParseError is a problem in a lab file, with its position.
type ParseError struct {
	File   string
	Line   int
	Reason string // what is wrong and what to do
}

func (e *ParseError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Reason)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
}

// Warning is something a lab file says that umlkit ignores.
type Warning struct {
	File   string
	Line   int
	Reason string
}

func (w Warning) String() string {
	if w.Line == 0 {
		return fmt.Sprintf("%s: %s", w.File, w.Reason)
	}
	return fmt.Sprintf("%s:%d: %s", w.File, w.Line, w.Reason)
}

// Config is lab.conf as written: nodes in order of first mention, their
// interfaces and options, and the lab's metadata.
type Config struct {
	Meta     map[string]string // LAB_DESCRIPTION, LAB_VERSION, LAB_AUTHOR, LAB_EMAIL, LAB_WEB, LAB_NAME
	Hubs     []string          // UMLKIT_HUBS: domains that repeat every frame (Netkit's hubs)
	Nodes    []*Node
	Warnings []Warning
}

// Node is one device of the lab.
type Node struct {
	Name       string      `json:"name"`
	Interfaces []Interface `json:"interfaces"` // Interfaces[i] is eth<i>
	Mem        int         `json:"mem_mib,omitempty"`
	Image      string      `json:"image,omitempty"`
	Bridged    bool        `json:"bridged,omitempty"`
	IPv6       *bool       `json:"ipv6,omitempty"`
	Sysctls    []string    `json:"sysctls,omitempty"`   // KEY=VALUE
	Env        []string    `json:"env,omitempty"`       // NAME=VALUE
	NumTerms   *int        `json:"num_terms,omitempty"` // terminals to open at start; nil when lab.conf does not say
	Line       int         `json:"-"`                   // first mention in lab.conf, 0 if none

	// Files of the lab directory that belong to the node ("" when absent),
	// relative to the lab directory.
	Startup  string `json:"startup,omitempty"`
	Shutdown string `json:"shutdown,omitempty"`
	Tree     string `json:"tree,omitempty"`
	Test     string `json:"test,omitempty"`
}

// Interface is a node's NIC on a collision domain.
type Interface struct {
	Domain string `json:"domain"`
	MAC    string `json:"mac,omitempty"`
	Line   int    `json:"-"`
}

var (
	nameRe   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,23}$`)
	domainRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$`)
	lineRe   = regexp.MustCompile(`^([^\[\]=\s]+)\[([^\[\]]*)\]\s*=\s*(.*)$`)
	globalRe = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$`)
	sysctlRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
	envRe    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// metaKeys are the lab.conf metadata keys Kathara and Netkit define.
var metaKeys = map[string]bool{
	"LAB_DESCRIPTION": true, "LAB_VERSION": true, "LAB_AUTHOR": true,
	"LAB_EMAIL": true, "LAB_WEB": true, "LAB_NAME": true,
}

// ignoredOptions are Kathara device options that mean something for
// containers only; umlkit accepts them with a warning.
var ignoredOptions = map[string]string{
	"cpus": "CPU limits", "port": "host port forwarding", "exec": "exec commands",
	"shell": "the shell of connect", "entrypoint": "container entrypoints",
	"privileged": "privileged containers", "ulimit": "ulimits", "volume": "volumes",
	"hosthome": "the host home mount", "xterm": "terminal emulators", "consoles": "console types",
}

// ParseConfig reads lab.conf text; file names it in errors and warnings.
func ParseConfig(file string, data []byte) (*Config, error) {
	c := &Config{Meta: map[string]string{}}
	byName := map[string]*Node{}
	ifLine := map[string]map[int]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	n := 0
	perr := func(format string, a ...any) error {
		return &ParseError{File: file, Line: n, Reason: fmt.Sprintf(format, a...)}
	}
	warn := func(format string, a ...any) {
		c.Warnings = append(c.Warnings, Warning{File: file, Line: n, Reason: fmt.Sprintf(format, a...)})
	}
	for sc.Scan() {
		n++
		line := strings.TrimSpace(stripComment(sc.Text()))
		if line == "" {
			continue
		}
		if m := lineRe.FindStringSubmatch(line); m != nil {
			name, arg := m[1], strings.TrimSpace(m[2])
			val, err := unquote(strings.TrimSpace(m[3]))
			if err != nil {
				return nil, perr("%v", err)
			}
			if !nameRe.MatchString(name) {
				return nil, perr("device name %q: use 1-24 letters, digits, '_' or '-', starting with a letter or digit", name)
			}
			nd := byName[name]
			if nd == nil {
				nd = &Node{Name: name, Line: n}
				byName[name] = nd
				c.Nodes = append(c.Nodes, nd)
				ifLine[name] = map[int]int{}
			}
			if idx, err := strconv.Atoi(arg); err == nil {
				if err := addInterface(nd, idx, val, n, ifLine[name], perr); err != nil {
					return nil, err
				}
				continue
			}
			if err := setOption(nd, strings.ToLower(arg), val, perr, warn); err != nil {
				return nil, err
			}
			continue
		}
		if m := globalRe.FindStringSubmatch(line); m != nil {
			val, err := unquote(strings.TrimSpace(m[2]))
			if err != nil {
				return nil, perr("%v", err)
			}
			switch key := m[1]; {
			case metaKeys[key]:
				c.Meta[key] = val
			case key == "UMLKIT_HUBS":
				for _, d := range strings.Fields(strings.ReplaceAll(val, ",", " ")) {
					if !domainRe.MatchString(d) {
						return nil, perr("UMLKIT_HUBS: collision domain name %q: use letters, digits, '_', '.' or '-'", d)
					}
					c.Hubs = append(c.Hubs, d)
				}
			default:
				warn("unknown setting %s, ignored (lab.conf knows LAB_DESCRIPTION, LAB_VERSION, LAB_AUTHOR, LAB_EMAIL, LAB_WEB, and umlkit's UMLKIT_HUBS)", key)
			}
			continue
		}
		return nil, perr("cannot read %q: want NODE[N]=DOMAIN, NODE[N]=DOMAIN/MAC, NODE[option]=VALUE or LAB_KEY=VALUE", truncate(line, 60))
	}
	if err := sc.Err(); err != nil {
		return nil, &ParseError{File: file, Line: n + 1, Reason: err.Error()}
	}
	for _, nd := range c.Nodes {
		for i, ifc := range nd.Interfaces {
			if ifc.Domain == "" {
				last := 0
				for j := range nd.Interfaces {
					if nd.Interfaces[j].Domain != "" {
						last = j
					}
				}
				return nil, &ParseError{File: file, Line: nd.Interfaces[last].Line,
					Reason: fmt.Sprintf("device %s has eth%d but no eth%d: add %s[%d]=DOMAIN or number its interfaces from 0 without gaps", nd.Name, last, i, nd.Name, i)}
			}
		}
	}
	return c, nil
}

func addInterface(nd *Node, idx int, val string, line int, seen map[int]int, perr func(string, ...any) error) error {
	if idx < 0 || idx > 63 {
		return perr("%s[%d]: interface numbers go from 0 to 63", nd.Name, idx)
	}
	if prev, ok := seen[idx]; ok {
		return perr("%s[%d] is set twice (also on line %d): give each interface one collision domain", nd.Name, idx, prev)
	}
	seen[idx] = line
	if strings.HasPrefix(val, "tap,") {
		return perr("%s[%d]=%s: Netkit's tap collision domain (a host TAP) is not supported by umlkit labs: remove it", nd.Name, idx, val)
	}
	dom, mac, hasMAC := strings.Cut(val, "/")
	if !domainRe.MatchString(dom) {
		return perr("%s[%d]=%q: collision domain name %q: use 1-32 letters, digits, '_', '.' or '-'", nd.Name, idx, val, dom)
	}
	ifc := Interface{Domain: dom, Line: line}
	if hasMAC {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return perr("%s[%d]=%q: MAC address %q: write six hex bytes like 02:00:00:00:00:01", nd.Name, idx, val, mac)
		}
		if hw[0]&1 != 0 {
			return perr("%s[%d]=%q: %s is a multicast address: the first byte must be even (02:... is a safe local prefix)", nd.Name, idx, val, mac)
		}
		ifc.MAC = hw.String()
	}
	for len(nd.Interfaces) <= idx {
		nd.Interfaces = append(nd.Interfaces, Interface{})
	}
	nd.Interfaces[idx] = ifc
	return nil
}

func setOption(nd *Node, opt, val string, perr func(string, ...any) error, warn func(string, ...any)) error {
	switch opt {
	case "mem":
		m, err := parseMem(val)
		if err != nil {
			return perr("%s[mem]=%q: %v", nd.Name, val, err)
		}
		nd.Mem = m
	case "image":
		if val == "" || strings.ContainsAny(val, " \t,") {
			return perr("%s[image]=%q: name an image, such as kathara/base", nd.Name, val)
		}
		nd.Image = val
	case "bridged":
		b, err := parseBool(val)
		if err != nil {
			return perr("%s[bridged]=%q: %v", nd.Name, val, err)
		}
		nd.Bridged = b
	case "ipv6":
		b, err := parseBool(val)
		if err != nil {
			return perr("%s[ipv6]=%q: %v", nd.Name, val, err)
		}
		nd.IPv6 = &b
	case "sysctl":
		k, v, ok := strings.Cut(val, "=")
		k = strings.TrimSpace(k)
		if !ok || !sysctlRe.MatchString(k) {
			return perr("%s[sysctl]=%q: write KEY=VALUE, such as net.ipv4.ip_forward=1", nd.Name, val)
		}
		nd.Sysctls = append(nd.Sysctls, k+"="+strings.TrimSpace(v))
	case "env":
		k, _, ok := strings.Cut(val, "=")
		if !ok || !envRe.MatchString(k) {
			return perr("%s[env]=%q: write NAME=VALUE, such as ROLE=router", nd.Name, val)
		}
		nd.Env = append(nd.Env, val)
	case "num_terms":
		t, err := strconv.Atoi(val)
		if err != nil || t < 0 || t > 16 {
			return perr("%s[num_terms]=%q: want a number of terminals from 0 to 16", nd.Name, val)
		}
		nd.NumTerms = &t
	default:
		if what, ok := ignoredOptions[opt]; ok {
			warn("%s[%s]: umlkit has no %s; ignored", nd.Name, opt, what)
			return nil
		}
		warn("%s[%s]: unknown option, ignored (umlkit knows N, mem, image, bridged, ipv6, sysctl, env, num_terms)", nd.Name, opt)
	}
	return nil
}

func parseMem(s string) (int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1
	switch {
	case strings.HasSuffix(t, "g"):
		mult, t = 1024, t[:len(t)-1]
	case strings.HasSuffix(t, "m"):
		t = t[:len(t)-1]
	}
	v, err := strconv.Atoi(strings.TrimSuffix(t, "b"))
	if err != nil || v <= 0 || v > 1<<20 {
		return 0, fmt.Errorf("want a size in MiB such as 128 or 128m")
	}
	if v*mult < 16 {
		return 0, fmt.Errorf("%d MiB is too little for a UML instance: give at least 16", v*mult)
	}
	return v * mult, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "yes", "1", "on":
		return true, nil
	case "false", "no", "0", "off":
		return false, nil
	}
	return false, fmt.Errorf("want true or false")
}

// stripComment removes a '#' comment outside quotes.
func stripComment(s string) string {
	var q byte
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case q != 0 && c == q:
			q = 0
		case q == 0 && (c == '"' || c == '\''):
			q = c
		case q == 0 && c == '#':
			return s[:i]
		}
	}
	return s
}

func unquote(s string) (string, error) {
	if len(s) > 0 && (s[0] == '"' || s[0] == '\'') {
		if len(s) < 2 || s[len(s)-1] != s[0] {
			return "", fmt.Errorf("value %s has no closing %c: close the quote", truncate(s, 40), s[0])
		}
		return s[1 : len(s)-1], nil
	}
	return s, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
