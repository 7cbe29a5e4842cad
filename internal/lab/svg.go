package lab

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strings"
)

// SVG draws the lab as a self-contained SVG picture: nodes on an outer
// circle (ordered by their first domain, so links cross little), each
// domain inside, near its nodes (hubs dashed), a line per NIC labelled
// ethN and its address when addrs (node, device: addresses) has one, and
// the host below when nodes are bridged. It needs no Graphviz.
func SVG(l *Lab, addrs map[string]map[string]string) string {
	nodes := append([]*Node(nil), l.Nodes...)
	firstDomain := func(n *Node) int {
		for i, d := range l.Domains {
			for _, ln := range d.Links {
				if ln.Node == n.Name {
					return i
				}
			}
		}
		return len(l.Domains)
	}
	sort.SliceStable(nodes, func(i, j int) bool { return firstDomain(nodes[i]) < firstDomain(nodes[j]) })

	n := max(len(nodes), 1)
	r := math.Max(160, float64(n)*28)
	cx, cy := r+120, r+90
	width, height := 2*cx, 2*cy+60
	angle := map[string]float64{}
	pos := map[string][2]float64{}
	for i, nd := range nodes {
		a := 2*math.Pi*float64(i)/float64(n) - math.Pi/2
		angle[nd.Name] = a
		pos["node:"+nd.Name] = [2]float64{cx + r*math.Cos(a), cy + r*math.Sin(a)}
	}
	for i, d := range l.Domains {
		var sx, sy float64
		for _, ln := range d.Links {
			sx += math.Cos(angle[ln.Node])
			sy += math.Sin(angle[ln.Node])
		}
		k := math.Hypot(sx, sy)
		// Near its nodes when they are close together, towards the centre
		// when they are spread around.
		dr := r * 0.5 * k / float64(max(len(d.Links), 1))
		a := math.Atan2(sy, sx)
		if k < 1e-6 || len(d.Links) == 0 {
			// Members all around (or none): spread such domains near the centre.
			a = 2 * math.Pi * float64(i) / float64(max(len(l.Domains), 1))
			dr = r * 0.15
		}
		pos["domain:"+d.Name] = [2]float64{cx + dr*math.Cos(a), cy + dr*math.Sin(a)}
	}
	host := [2]float64{cx, height - 40}

	e := html.EscapeString
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, "<title>%s</title>\n", e(l.Name()))
	if d := l.Meta["LAB_DESCRIPTION"]; d != "" {
		fmt.Fprintf(&b, `<text x="10" y="20" font-size="14">%s</text>`+"\n", e(d))
	}
	line := func(from, to [2]float64, label string, bold bool) {
		w := 1.2
		if bold {
			w = 2.5
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#555" stroke-width="%.1f"/>`+"\n", from[0], from[1], to[0], to[1], w)
		// The label sits on the line, clear of the node's box.
		dx, dy := to[0]-from[0], to[1]-from[1]
		dist := math.Hypot(dx, dy)
		t := math.Min(0.5, math.Max(0.35, 40/math.Max(dist, 1)))
		lx, ly := from[0]+dx*t, from[1]+dy*t
		for i, part := range strings.Split(label, "\n") {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#036" stroke="#fff" stroke-width="3" paint-order="stroke">%s</text>`+"\n", lx, ly+float64(i)*13, e(part))
		}
	}
	for _, d := range l.Domains {
		for _, ln := range d.Links {
			label := fmt.Sprintf("eth%d", ln.Interface)
			if a := addrs[ln.Node][label]; a != "" {
				label += "\n" + a
			}
			line(pos["node:"+ln.Node], pos["domain:"+d.Name], label, false)
		}
	}
	bridged := false
	for _, nd := range nodes {
		if !nd.Bridged {
			continue
		}
		bridged = true
		label := fmt.Sprintf("eth%d", len(nd.Interfaces))
		if a := addrs[nd.Name][label]; a != "" {
			label += "\n" + a
		}
		line(pos["node:"+nd.Name], host, label, true)
	}
	for _, d := range l.Domains {
		p := pos["domain:"+d.Name]
		dash := ""
		if d.Hub {
			dash = ` stroke-dasharray="5,4"`
		}
		fmt.Fprintf(&b, `<ellipse cx="%.1f" cy="%.1f" rx="%d" ry="16" fill="#eef6ee" stroke="#363"%s/>`+"\n", p[0], p[1], 14+4*len(d.Name), dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", p[0], p[1]+4, e(d.Name))
	}
	for _, nd := range nodes {
		p := pos["node:"+nd.Name]
		w := 20 + 7*len(nd.Name)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%d" height="26" rx="6" fill="#fff" stroke="#333"/>`+"\n", p[0]-float64(w)/2, p[1]-13, w)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold">%s</text>`+"\n", p[0], p[1]+4, e(nd.Name))
	}
	if bridged {
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="110" height="28" fill="#f4f4f4" stroke="#333"/>`+"\n", host[0]-55, host[1]-14)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">host (NAT)</text>`+"\n", host[0], host[1]+4)
	}
	b.WriteString("</svg>\n")
	return b.String()
}
