package image

import (
	"fmt"
	"testing"
)

func TestSlackRecordRoundTrip(t *testing.T) {
	p := &Package{Name: "foo-1.0-x86_64-1", CompressedSize: 12345, UncompressedSize: 40960,
		Desc: []string{"foo: foo (a tool)", "foo:", "foo: More."}, Files: []string{"./", "usr/", "usr/bin/", "usr/bin/foo"}}
	text := FormatSlackRecord(p, "/mnt/foo-1.0-x86_64-1.txz")
	want := "PACKAGE NAME:     foo-1.0-x86_64-1\nCOMPRESSED PACKAGE SIZE:     12K\nUNCOMPRESSED PACKAGE SIZE:     40K\nPACKAGE LOCATION: /mnt/foo-1.0-x86_64-1.txz\nPACKAGE DESCRIPTION:\nfoo: foo (a tool)\nfoo:\nfoo: More.\nFILE LIST:\n./\nusr/\nusr/bin/\nusr/bin/foo\n"
	if text != want {
		t.Fatalf("FormatSlackRecord = %q, want %q", text, want)
	}
	r, err := ParseSlackRecord(text)
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != p.Name || r.CompressedSize != "12K" || r.UncompressedSize != "40K" || r.Location != "/mnt/foo-1.0-x86_64-1.txz" ||
		fmt.Sprint(r.Desc) != fmt.Sprint(p.Desc) || fmt.Sprint(r.Files) != fmt.Sprint(p.Files) || r.Summary() != "foo (a tool)" {
		t.Errorf("ParseSlackRecord = %+v", r)
	}
	if _, err := ParseSlackRecord("FILE LIST:\nx\n"); err == nil {
		t.Error("ParseSlackRecord accepted a record without a name")
	}
}

func TestSlackShortName(t *testing.T) {
	for in, want := range map[string]string{"foo-1.0-x86_64-1": "foo", "ipsec-tools-0.5.1-i486-1maew": "ipsec-tools", "odd": "odd"} {
		if got := SlackShortName(in); got != want {
			t.Errorf("SlackShortName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDpkgStatus(t *testing.T) {
	text := "Package: a\nStatus: install ok installed\nDescription: first line\n more\n .\n end\n\nPackage: b\nStatus: deinstall ok config-files\n"
	st := ParseDpkgStatus(text)
	if len(st) != 2 || st[0].Get("package") != "a" || st[0].Get("Description") != "first line\n more\n .\n end" || st[1].Get("Status") != "deinstall ok config-files" {
		t.Fatalf("ParseDpkgStatus = %+v", st)
	}
	if got := FormatDpkgStatus(st); got != text {
		t.Errorf("FormatDpkgStatus = %q, want %q", got, text)
	}
	st = replacePackage(st, Stanza{{"Package", "b"}, {"Status", "install ok installed"}})
	if len(st) != 2 || st[1].Get("Status") != "install ok installed" {
		t.Errorf("replacePackage = %+v", st)
	}
}

func TestSymlinksOf(t *testing.T) {
	script := "( cd usr/lib ; rm -rf libfoo.so )\n( cd usr/lib ; ln -sf libfoo.so.1 libfoo.so )\nln -s /etc/x etc/y\n( cd ../.. ; ln -sf a ../../b )\nif [ -x x ]; then ln -sf a; fi\n"
	got := SymlinksOf(script)
	want := []string{"usr/lib/libfoo.so", "etc/y", "b"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("SymlinksOf = %q, want %q", got, want)
	}
}

func TestParseAr(t *testing.T) {
	ar := "!<arch>\n" + arMember("debian-binary", "2.0\n") + arMember("control.tar.gz", "abc") + arMember("data.tar.xz", "")
	m, err := ParseAr([]byte(ar), 1<<20)
	if err != nil || len(m) != 3 || m[0].Name != "debian-binary" || string(m[0].Data) != "2.0\n" || m[1].Name != "control.tar.gz" || string(m[1].Data) != "abc" {
		t.Fatalf("ParseAr = %+v, %v", m, err)
	}
	for _, bad := range []string{"", "!<arch>\nshort", "!<arch>\n" + fmt.Sprintf("%-16s%-12s%-6s%-6s%-8s%-10d`\n", "x", "0", "0", "0", "100644", 9) + "abcd", "!<arch>\n" + arMember("x", "ab")[:59] + "Z"} {
		if _, err := ParseAr([]byte(bad), 1<<20); err == nil {
			t.Errorf("ParseAr(%q) accepted it", bad)
		}
	}
}

func arMember(name, data string) string {
	h := fmt.Sprintf("%-16s%-12s%-6s%-6s%-8s%-10d`\n", name, "0", "0", "0", "100644", len(data))
	if len(data)%2 == 1 {
		data += "\n"
	}
	return h + data
}

func FuzzParseAr(f *testing.F) {
	f.Add([]byte("!<arch>\n" + arMember("debian-binary", "2.0\n")))
	f.Add([]byte("!<arch>\n"))
	f.Fuzz(func(t *testing.T, b []byte) { ParseAr(b, 1<<20) })
}

func FuzzParseRecords(f *testing.F) {
	f.Add("PACKAGE NAME:     foo\nPACKAGE DESCRIPTION:\nfoo: x\nFILE LIST:\n./\n")
	f.Add("Package: a\nDescription: x\n y\n\n")
	f.Add("( cd usr ; ln -sf a b )\n")
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := ParseSlackRecord(s); err == nil {
			r.Summary()
		}
		FormatDpkgStatus(ParseDpkgStatus(s))
		SymlinksOf(s)
	})
}
