package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strings"
)

// Deps is lab.dep: each node and the nodes that must be up before it.
type Deps map[string][]string

// ParseDeps reads lab.dep text (Makefile-like lines "NODE: DEP DEP ...",
// '#' comments); file names it in errors.
func ParseDeps(file string, data []byte) (Deps, error) {
	d := Deps{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(stripComment(sc.Text()))
		if line == "" {
			continue
		}
		lhs, rhs, ok := strings.Cut(line, ":")
		targets := strings.Fields(lhs)
		if !ok || len(targets) == 0 {
			return nil, &ParseError{File: file, Line: n, Reason: fmt.Sprintf("cannot read %q: want NODE: NODE-IT-NEEDS ...", truncate(line, 60))}
		}
		for _, name := range append(append([]string{}, targets...), strings.Fields(rhs)...) {
			if !nameRe.MatchString(name) {
				return nil, &ParseError{File: file, Line: n, Reason: fmt.Sprintf("device name %q: use letters, digits, '_' or '-'", name)}
			}
		}
		for _, t := range targets {
			d[t] = append(d[t], strings.Fields(rhs)...)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, &ParseError{File: file, Line: n + 1, Reason: err.Error()}
	}
	return d, nil
}

// Levels orders nodes for start: every node comes in a later level than
// the nodes it depends on, and the nodes of one level can start together.
// A cycle is an error naming it.
func (d Deps) Levels(nodes []string) ([][]string, error) {
	level := map[string]int{}
	state := map[string]int{} // 0 new, 1 visiting, 2 done
	var stack []string
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			i := 0
			for stack[i] != n {
				i++
			}
			cyc := append(append([]string{}, stack[i:]...), n)
			return fmt.Errorf("lab.dep has a cycle: %s: remove one of these dependencies", strings.Join(cyc, " -> "))
		case 2:
			return nil
		}
		state[n] = 1
		stack = append(stack, n)
		l := 0
		deps := append([]string{}, d[n]...)
		sort.Strings(deps)
		for _, m := range deps {
			if err := visit(m); err != nil {
				return err
			}
			if level[m]+1 > l {
				l = level[m] + 1
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = 2
		level[n] = l
		return nil
	}
	for _, n := range nodes {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	var out [][]string
	for _, n := range nodes {
		for len(out) <= level[n] {
			out = append(out, nil)
		}
		out[level[n]] = append(out[level[n]], n)
	}
	return out, nil
}
