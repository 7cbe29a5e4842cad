package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Lab is a lab directory read into a plan.
type Lab struct {
	Dir      string            `json:"dir"` // absolute
	Meta     map[string]string `json:"meta,omitempty"`
	Nodes    []*Node           `json:"nodes"`   // lab.conf order, then node directories by name
	Domains  []*Domain         `json:"domains"` // by name
	Deps     Deps              `json:"deps,omitempty"`
	Levels   [][]string        `json:"levels"`           // start order (see Deps.Levels)
	Shared   bool              `json:"shared,omitempty"` // shared/ exists
	Warnings []Warning         `json:"-"`
	byName   map[string]*Node
}

// Domain is a collision domain: a switch (or a hub) and the NICs on it.
type Domain struct {
	Name  string     `json:"name"`
	Hub   bool       `json:"hub,omitempty"`
	Links []Endpoint `json:"links"`
}

// Endpoint is one NIC on a domain.
type Endpoint struct {
	Node      string `json:"node"`
	Interface int    `json:"interface"` // eth<Interface>
}

// Node returns the node called name, or nil.
func (l *Lab) Node(name string) *Node { return l.byName[name] }

// special names in a lab directory that are not nodes.
func special(name string) bool {
	return name == "shared" || name == "_test" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")
}

// Load reads the lab directory dir. A directory with neither lab.conf nor
// node directories is an error.
func Load(dir string) (*Lab, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("lab %s: not a directory: give the lab's directory (the one with lab.conf)", dir)
	}
	l := &Lab{Dir: abs, byName: map[string]*Node{}}
	confPath := filepath.Join(abs, "lab.conf")
	data, err := os.ReadFile(confPath)
	switch {
	case err == nil:
		c, err := ParseConfig(confPath, data)
		if err != nil {
			return nil, err
		}
		l.Meta, l.Nodes, l.Warnings = c.Meta, c.Nodes, c.Warnings
		for _, n := range l.Nodes {
			l.byName[n.Name] = n
		}
		if err := l.buildDomains(c.Hubs, confPath); err != nil {
			return nil, err
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, fmt.Errorf("lab %s: %w", dir, err)
	}
	// Netkit also starts a node for every directory of the lab.
	ents, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", dir, err)
	}
	var extra []string
	for _, e := range ents {
		if e.IsDir() && !special(e.Name()) && l.byName[e.Name()] == nil && nameRe.MatchString(e.Name()) {
			extra = append(extra, e.Name())
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		n := &Node{Name: name}
		l.Nodes = append(l.Nodes, n)
		l.byName[name] = n
	}
	if len(l.Nodes) == 0 {
		return nil, fmt.Errorf("lab %s: no lab.conf and no node directories: is this a lab directory? (a lab has a lab.conf with lines like pc1[0]=A)", dir)
	}
	for _, n := range l.Nodes {
		l.findFiles(n)
		if len(n.Interfaces) == 0 {
			where := confPath
			l.Warnings = append(l.Warnings, Warning{File: where, Line: n.Line,
				Reason: fmt.Sprintf("device %s is in no collision domain: it starts with no network interface (add %s[0]=DOMAIN to connect it)", n.Name, n.Name)})
		}
	}
	if st, err := os.Stat(filepath.Join(abs, "shared")); err == nil && st.IsDir() {
		l.Shared = true
	}
	depPath := filepath.Join(abs, "lab.dep")
	if data, err := os.ReadFile(depPath); err == nil {
		d, err := ParseDeps(depPath, data)
		if err != nil {
			return nil, err
		}
		for _, k := range sortedKeys(d) {
			for _, name := range append([]string{k}, d[k]...) {
				if l.byName[name] == nil {
					return nil, &ParseError{File: depPath, Reason: fmt.Sprintf("device %s is not in the lab (lab.conf names %s): fix the name or add the device", name, strings.Join(l.names(), ", "))}
				}
			}
		}
		l.Deps = d
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab %s: %w", dir, err)
	}
	l.Levels, err = l.Deps.Levels(l.names())
	if err != nil {
		return nil, &ParseError{File: depPath, Reason: err.Error()}
	}
	return l, nil
}

func (l *Lab) names() []string {
	out := make([]string, len(l.Nodes))
	for i, n := range l.Nodes {
		out[i] = n.Name
	}
	return out
}

func (l *Lab) buildDomains(hubs []string, confPath string) error {
	byName := map[string]*Domain{}
	for _, n := range l.Nodes {
		for i, ifc := range n.Interfaces {
			d := byName[ifc.Domain]
			if d == nil {
				d = &Domain{Name: ifc.Domain}
				byName[ifc.Domain] = d
			}
			d.Links = append(d.Links, Endpoint{Node: n.Name, Interface: i})
		}
	}
	for _, h := range hubs {
		d := byName[h]
		if d == nil {
			return &ParseError{File: confPath, Reason: fmt.Sprintf("UMLKIT_HUBS names %s, which no interface is on: fix the name", h)}
		}
		d.Hub = true
	}
	for _, k := range sortedKeys(byName) {
		l.Domains = append(l.Domains, byName[k])
	}
	return nil
}

func (l *Lab) findFiles(n *Node) {
	exists := func(rel string, dir bool) string {
		st, err := os.Stat(filepath.Join(l.Dir, rel))
		if err != nil || st.IsDir() != dir {
			return ""
		}
		return rel
	}
	n.Startup = exists(n.Name+".startup", false)
	n.Shutdown = exists(n.Name+".shutdown", false)
	n.Tree = exists(n.Name, true)
	n.Test = exists(filepath.Join("_test", n.Name+".test"), false)
}

// Domain returns the domain called name, or nil.
func (l *Lab) Domain(name string) *Domain {
	for _, d := range l.Domains {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Name is the lab's name: LAB_NAME, else its directory's name.
func (l *Lab) Name() string {
	if n := l.Meta["LAB_NAME"]; n != "" {
		return n
	}
	return filepath.Base(l.Dir)
}
