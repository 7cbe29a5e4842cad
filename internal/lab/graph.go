package lab

import (
	"fmt"
	"html"
	"strings"
)

// Dot draws the lab as a Graphviz graph: nodes as boxes, domains as
// ellipses (hubs dashed), an edge per NIC labelled ethN and its address
// when addrs (node, device: addresses) has one.
func Dot(l *Lab, addrs map[string]map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "graph %q {\n  layout=neato; overlap=false; splines=true;\n", l.Name())
	if d := l.Meta["LAB_DESCRIPTION"]; d != "" {
		fmt.Fprintf(&b, "  label=%q;\n", d)
	}
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, "  %q [shape=box, style=rounded];\n", "node:"+n.Name)
		fmt.Fprintf(&b, "  %q [label=%q];\n", "node:"+n.Name, n.Name)
	}
	for _, d := range l.Domains {
		style := "solid"
		if d.Hub {
			style = "dashed"
		}
		fmt.Fprintf(&b, "  %q [shape=ellipse, style=%s, label=%q];\n", "domain:"+d.Name, style, d.Name)
	}
	for _, d := range l.Domains {
		for _, e := range d.Links {
			label := fmt.Sprintf("eth%d", e.Interface)
			if a := addrs[e.Node][label]; a != "" {
				label += "\\n" + a
			}
			fmt.Fprintf(&b, "  %q -- %q [label=\"%s\"];\n", "node:"+e.Node, "domain:"+d.Name, strings.ReplaceAll(label, `"`, `\"`))
		}
	}
	// Bridged nodes link to the host (a node that is not a domain).
	for i, n := range l.Nodes {
		if !n.Bridged {
			continue
		}
		if i == bridgedFirst(l) {
			b.WriteString("  \"host\" [shape=box3d, label=\"host (NAT)\"];\n")
		}
		label := fmt.Sprintf("eth%d", len(n.Interfaces))
		if a := addrs[n.Name][label]; a != "" {
			label += "\\n" + a
		}
		fmt.Fprintf(&b, "  %q -- \"host\" [label=\"%s\", style=bold];\n", "node:"+n.Name, label)
	}
	b.WriteString("}\n")
	return b.String()
}

// HTML is a self-contained page with the lab's picture (SVG) and its
// nodes, domains and links as tables (no scripts, no network).
func HTML(l *Lab, addrs map[string]map[string]string) string {
	var b strings.Builder
	e := html.EscapeString
	fmt.Fprintf(&b, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>%s</title>\n", e(l.Name()))
	b.WriteString("<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;padding:4px 8px}.hub{font-style:italic}</style></head><body>\n")
	fmt.Fprintf(&b, "<h1>%s</h1>\n", e(l.Name()))
	if d := l.Meta["LAB_DESCRIPTION"]; d != "" {
		fmt.Fprintf(&b, "<p>%s</p>\n", e(d))
	}
	b.WriteString(SVG(l, addrs))
	b.WriteString("<h2>Collision domains</h2>\n<table><tr><th>domain</th><th>kind</th><th>nodes</th></tr>\n")
	for _, d := range l.Domains {
		kind := "switch"
		if d.Hub {
			kind = "hub"
		}
		var members []string
		for _, l := range d.Links {
			members = append(members, fmt.Sprintf("%s eth%d", l.Node, l.Interface))
		}
		fmt.Fprintf(&b, "<tr><td>%s</td><td class=%q>%s</td><td>%s</td></tr>\n", e(d.Name), kind, kind, e(strings.Join(members, ", ")))
	}
	b.WriteString("</table>\n<h2>Nodes</h2>\n<table><tr><th>node</th><th>interface</th><th>domain</th><th>address</th></tr>\n")
	for _, n := range l.Nodes {
		if len(n.Interfaces) == 0 {
			fmt.Fprintf(&b, "<tr><td>%s</td><td>-</td><td>-</td><td>-</td></tr>\n", e(n.Name))
		}
		for i, ifc := range n.Interfaces {
			dev := fmt.Sprintf("eth%d", i)
			fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n", e(n.Name), dev, e(ifc.Domain), e(addrs[n.Name][dev]))
		}
		if n.Bridged {
			dev := fmt.Sprintf("eth%d", len(n.Interfaces))
			fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td><td>host (bridged, NAT)</td><td>%s</td></tr>\n", e(n.Name), dev, e(addrs[n.Name][dev]))
		}
	}
	b.WriteString("</table>\n</body></html>\n")
	return b.String()
}

// bridgedFirst is the index of the lab's first bridged node, or -1.
func bridgedFirst(l *Lab) int {
	for i, n := range l.Nodes {
		if n.Bridged {
			return i
		}
	}
	return -1
}
