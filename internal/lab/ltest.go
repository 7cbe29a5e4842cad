package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/umlkit/umlkit/internal/machine"
)

// BuiltinTest is the script every node runs under ltest, like Netkit's
// and Kathara's builtin test: its interfaces and routes.
const BuiltinTest = "ip addr show; echo; ip route show"

// TestOptions configures Test.
type TestOptions struct {
	Options
	// Record writes the results as the lab's signatures (_test/signature).
	Record bool
	// Nodes limits the test to these nodes (all when empty).
	Nodes []string
}

// Result is one test item's outcome.
type Result struct {
	Node   string `json:"node"`
	Item   string `json:"item"`   // "default", "user", or a check's text
	Status string `json:"status"` // pass, fail, recorded
	Detail string `json:"detail,omitempty"`
	Where  string `json:"where,omitempty"` // file:line of a check
}

// Report is what Test found.
type Report struct {
	Results []Result `json:"results"`
	Failed  int      `json:"failed"`
}

// Test runs the lab's tests: for each node the builtin script and
// _test/NODE.test, their output stored in _test/results/NODE.default and
// NODE.user and compared with _test/signature/ (recorded there when
// missing, or always with Record, as Netkit's ltest does on a first run);
// then the checks in _test/checks. A lab that is not running is started
// first and stopped afterwards; a running one is left running.
func Test(ctx context.Context, l *Lab, o TestOptions) (*Report, error) {
	var checks []Check
	checksPath := filepath.Join(l.Dir, "_test", "checks")
	if b, err := os.ReadFile(checksPath); err == nil {
		if checks, err = ParseChecks(checksPath, b); err != nil {
			return nil, err
		}
		for _, c := range checks {
			if l.Node(c.Node) == nil {
				return nil, &ParseError{File: checksPath, Line: c.Line, Reason: fmt.Sprintf("device %s is not in the lab (it has %s)", c.Node, strings.Join(l.names(), ", "))}
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	sel, err := l.selectNodes(o.Nodes)
	if err != nil {
		return nil, err
	}
	wasUp := true
	for name := range sel {
		if in, err := machine.Get(l.Instance(name)); err != nil || !in.State.Live() {
			wasUp = false
		}
	}
	rep := &Report{}
	if !wasUp {
		res, err := Up(ctx, l, o.Nodes, o.Options)
		defer Down(context.WithoutCancel(ctx), l, o.Nodes, false, o.Options)
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			if r.Err != nil {
				rep.add(Result{Node: r.Node, Item: "start", Status: "fail", Detail: r.Err.Error()})
			} else if r.Startup != nil && *r.Startup != 0 {
				rep.add(Result{Node: r.Node, Item: "startup", Status: "fail", Detail: fmt.Sprintf("%s exited %d: %s", l.Node(r.Node).Startup, *r.Startup, lastLines(r.Output, 3))})
			}
		}
	}
	resDir := filepath.Join(l.Dir, "_test", "results")
	sigDir := filepath.Join(l.Dir, "_test", "signature")
	for _, d := range []string{resDir, sigDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var items []Result
	for _, n := range l.Nodes {
		if !sel[n.Name] {
			continue
		}
		wg.Add(1)
		go func(n *Node) {
			defer wg.Done()
			scripts := []struct{ item, script string }{{"default", BuiltinTest}}
			if n.Test != "" {
				scripts = append(scripts, struct{ item, script string }{"user", "exec /bin/sh " + GuestLab + "/" + shq(n.Test) + " 2>&1"})
			}
			for _, s := range scripts {
				r := Result{Node: n.Name, Item: s.item}
				g, err := l.guestRun(ctx, n.Name, s.script, n.Env, 2*time.Minute)
				if err != nil {
					r.Status, r.Detail = "fail", err.Error()
				} else {
					r = compareSignature(r, g.out, filepath.Join(resDir, n.Name+"."+s.item), filepath.Join(sigDir, n.Name+"."+s.item), o.Record)
				}
				mu.Lock()
				items = append(items, r)
				mu.Unlock()
			}
		}(n)
	}
	wg.Wait()
	// Keep the report in lab order.
	for _, n := range l.Nodes {
		for _, item := range []string{"default", "user"} {
			for _, r := range items {
				if r.Node == n.Name && r.Item == item {
					rep.add(r)
				}
			}
		}
	}
	for _, c := range checks {
		if !sel[c.Node] {
			continue
		}
		rep.add(runCheck(ctx, l, c, checksPath))
	}
	return rep, nil
}

func (r *Report) add(res Result) {
	r.Results = append(r.Results, res)
	if res.Status == "fail" {
		r.Failed++
	}
}

func compareSignature(r Result, got, resPath, sigPath string, record bool) Result {
	os.WriteFile(resPath, []byte(got), 0o644)
	want, err := os.ReadFile(sigPath)
	if record || errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(sigPath, []byte(got), 0o644); err != nil {
			r.Status, r.Detail = "fail", err.Error()
			return r
		}
		r.Status, r.Detail = "recorded", sigPath
		return r
	}
	if err != nil {
		r.Status, r.Detail = "fail", err.Error()
		return r
	}
	if string(want) == got {
		r.Status = "pass"
		return r
	}
	r.Status, r.Detail = "fail", "output differs from "+sigPath+":\n"+lineDiff(string(want), got)
	return r
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	count := map[string]int{}
	for _, l := range strings.Split(want, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(got, "\n") {
		count[l]--
	}
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if count[l] > 0 {
			fmt.Fprintf(&b, "  - %s\n", l)
			count[l]--
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if count[l] < 0 {
			fmt.Fprintf(&b, "  + %s\n", l)
			count[l]++
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func runCheck(ctx context.Context, l *Lab, c Check, file string) Result {
	r := Result{Node: c.Node, Item: c.Text, Where: fmt.Sprintf("%s:%d", file, c.Line)}
	ok, detail := false, ""
	switch c.Kind {
	case "ping":
		// A few tries: the first echo may wait for ARP or a routing daemon.
		tries := 3
		if c.Negate {
			tries = 1
		}
		for i := 0; i < tries && !ok; i++ {
			code, out, err := Exec(ctx, l, c.Node, "ping -c 1 -W 2 "+shq(c.Target), 30*time.Second)
			ok, detail = err == nil && code == 0, lastLines(out, 2)
			if err != nil {
				detail = err.Error()
			}
		}
	case "route":
		code, out, err := Exec(ctx, l, c.Node, "ip route show", 30*time.Second)
		if err != nil || code != 0 {
			detail = fmt.Sprintf("ip route: exit %d %v", code, err)
			break
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && (f[0] == c.Target || c.Target == "0.0.0.0/0" && f[0] == "default") {
				ok = true
			}
		}
		detail = "routes: " + strings.Join(strings.Split(strings.TrimSpace(out), "\n"), "; ")
	case "exec":
		code, out, err := Exec(ctx, l, c.Node, c.Target, time.Minute)
		switch {
		case err != nil:
			detail = err.Error()
		case c.Contains != "":
			ok = code == 0 && strings.Contains(out, c.Contains)
			detail = fmt.Sprintf("exit %d, output %q", code, truncate(strings.TrimSpace(out), 200))
		default:
			ok = code == c.Exit
			detail = fmt.Sprintf("exit %d, output %q", code, truncate(strings.TrimSpace(out), 200))
		}
	}
	if ok != c.Negate {
		r.Status = "pass"
	} else {
		r.Status, r.Detail = "fail", detail
	}
	return r
}

// FormatReport writes the report for people.
func FormatReport(w io.Writer, rep *Report) {
	for _, r := range rep.Results {
		mark := map[string]string{"pass": "ok  ", "fail": "FAIL", "recorded": "rec "}[r.Status]
		fmt.Fprintf(w, "%s %-10s %s", mark, r.Node, r.Item)
		if r.Where != "" && r.Status == "fail" {
			fmt.Fprintf(w, " (%s)", r.Where)
		}
		fmt.Fprintln(w)
		if r.Detail != "" && r.Status != "pass" {
			for _, line := range strings.Split(r.Detail, "\n") {
				fmt.Fprintf(w, "       %s\n", line)
			}
		}
	}
	if rep.Failed > 0 {
		fmt.Fprintf(w, "%d of %d failed\n", rep.Failed, len(rep.Results))
	} else {
		fmt.Fprintf(w, "all %d passed\n", len(rep.Results))
	}
}
