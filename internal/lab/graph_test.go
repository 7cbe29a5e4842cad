package lab

import (
	"context"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDotAndHTML(t *testing.T) {
	l, err := Load(filepath.Join("testdata", "hubfiles"))
	if err != nil {
		t.Fatal(err)
	}
	dot := Dot(l, map[string]map[string]string{"pc1": {"eth0": "10.0.9.1/24"}})
	for _, want := range []string{
		`graph "hubfiles" {`,
		`"domain:H" [shape=ellipse, style=dashed, label="H"];`,
		`"node:pc1" -- "domain:H" [label="eth0\n10.0.9.1/24"];`,
		`"node:pc3" -- "domain:H" [label="eth0"];`,
	} {
		if !strings.Contains(dot, want) {
			t.Errorf("Dot lacks %q:\n%s", want, dot)
		}
	}
	l.Meta = map[string]string{"LAB_DESCRIPTION": "<b>&"}
	page := HTML(l, nil)
	if !strings.Contains(page, "<p>&lt;b&gt;&amp;</p>") || !strings.Contains(page, `<td class="hub">hub</td>`) {
		t.Errorf("HTML does not escape the description or show the hub:\n%s", page)
	}
}

func TestResolveImage(t *testing.T) {
	img := filepath.Join(t.TempDir(), "root_fs")
	os.WriteFile(img, []byte("x"), 0o644)
	t.Setenv(EnvImage, img)
	for _, name := range []string{"", "kathara/base", "kathara/frr"} {
		if got, err := ResolveImage(context.Background(), name, ""); err != nil || got != img {
			t.Errorf("ResolveImage(%q) = %q, %v, want %s", name, got, err, img)
		}
	}
	t.Setenv(EnvImage, "")
	t.Setenv("UMLKIT_DATA_DIR", t.TempDir())
	if _, err := ResolveImage(context.Background(), "kathara/frr", ""); err == nil || !strings.Contains(err.Error(), "--preset router") {
		t.Errorf("ResolveImage(kathara/frr) without a router image = %v, want the command that builds it", err)
	}
	t.Setenv(EnvImageMap, "kathara/frr=custom")
	if got := ImageFor("kathara/frr"); got != "custom" {
		t.Errorf("ImageFor(kathara/frr) with %s = %q, want custom", EnvImageMap, got)
	}
	t.Setenv(EnvImage, img+".missing")
	if _, err := ResolveImage(context.Background(), "kathara/base", ""); err == nil || !strings.Contains(err.Error(), EnvImage) {
		t.Errorf("ResolveImage with a missing %s = %v, want an error naming it", EnvImage, err)
	}
}

func TestDotBridged(t *testing.T) {
	l, err := Load(filepath.Join("testdata", "bridged"))
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]map[string]string{"pc1": {"eth1": "100.64.1.2/30"}}
	dot := Dot(l, addrs)
	for _, want := range []string{`"host" [shape=box3d`, `"node:pc1" -- "host" [label="eth1\n100.64.1.2/30", style=bold];`} {
		if !strings.Contains(dot, want) {
			t.Errorf("Dot lacks %q:\n%s", want, dot)
		}
	}
	if strings.Contains(dot, `"node:pc2" -- "host"`) {
		t.Errorf("Dot links pc2, which is not bridged, to the host:\n%s", dot)
	}
	if page := HTML(l, addrs); !strings.Contains(page, "<td>pc1</td><td>eth1</td><td>host (bridged, NAT)</td><td>100.64.1.2/30</td>") {
		t.Errorf("HTML lacks pc1's link to the host:\n%s", page)
	}
}

// The SVG picture is well-formed XML with every node, domain and address,
// hubs dashed, and names escaped.
func TestSVG(t *testing.T) {
	l, err := Load(filepath.Join("testdata", "hubfiles"))
	if err != nil {
		t.Fatal(err)
	}
	l.Meta = map[string]string{"LAB_DESCRIPTION": "a <lab> & more"}
	pic := SVG(l, map[string]map[string]string{"pc1": {"eth0": "10.0.9.1/24"}})
	dec := xml.NewDecoder(strings.NewReader(pic))
	var texts []string
	ellipses, dashed := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, pic)
		}
		switch tk := tok.(type) {
		case xml.CharData:
			texts = append(texts, string(tk))
		case xml.StartElement:
			if tk.Name.Local == "ellipse" {
				ellipses++
				for _, a := range tk.Attr {
					if a.Name.Local == "stroke-dasharray" {
						dashed++
					}
				}
			}
		}
	}
	all := strings.Join(texts, "|")
	for _, n := range l.Nodes {
		if !strings.Contains(all, n.Name) {
			t.Errorf("SVG lacks node %s", n.Name)
		}
	}
	for _, want := range []string{"10.0.9.1/24", "a <lab> & more", "H"} {
		if !strings.Contains(all, want) {
			t.Errorf("SVG text lacks %q: %q", want, all)
		}
	}
	if ellipses != len(l.Domains) || dashed != 1 {
		t.Errorf("SVG has %d domain ellipses (%d dashed), want %d with the hub dashed", ellipses, dashed, len(l.Domains))
	}
	if !strings.Contains(HTML(l, nil), "<svg ") {
		t.Error("the HTML page does not include the picture")
	}
}
