package cow

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// golden is what a golden header file must parse to, geometry included.
type golden struct {
	Version                             int
	Broken64, HostOrderMagic            bool
	Backing                             string
	Mtime, Size                         int64
	SectorSize, Alignment               int
	BitmapOffset, BitmapLen, DataOffset int64
}

func TestGoldenHeaders(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.json")
	if len(files) < 6 {
		t.Fatalf("found %d golden headers, want one per version (v1, v1 host-order, v2, v3, v3 kernel, v3 broken)", len(files))
	}
	for _, jf := range files {
		name := strings.TrimSuffix(filepath.Base(jf), ".json")
		t.Run(name, func(t *testing.T) {
			var want golden
			b, err := os.ReadFile(jf)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			h, err := ReadHeader(filepath.Join("testdata", name+".hdr"))
			if err != nil {
				t.Fatalf("ReadHeader(%s) = %v", name, err)
			}
			got := golden{h.Version, h.Broken64, h.HostOrderMagic, h.Backing, h.Mtime, h.Size, h.SectorSize, h.Alignment,
				h.BitmapOffset(), h.BitmapLen(), h.DataOffset()}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("ReadHeader(%s) mismatch (-want +got):\n%s", name, d)
			}
		})
	}
}

// The writer's v3 header is byte for byte the golden v3 file.
func TestMarshalGolden(t *testing.T) {
	want, err := os.ReadFile("testdata/v3.hdr")
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("MarshalBinary(ParseHeader(v3.cow)) differs from v3.hdr")
	}
	// A kernel header with garbage after the path NUL parses to the same
	// fields after a rewrite.
	kb, _ := os.ReadFile("testdata/v3-kernel.hdr")
	kh, err := ParseHeader(kb)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := kh.MarshalBinary()
	rh, err := ParseHeader(rb)
	if err != nil || !cmp.Equal(kh, rh) {
		t.Errorf("re-marshalled kernel header = %+v, %v; want %+v", rh, err, kh)
	}
}

func TestBadHeaders(t *testing.T) {
	for _, tc := range []struct {
		file   string
		offset int64
		reason string
		is     error
	}{
		{"bad-short.hdr", 6, "short header", io.ErrUnexpectedEOF},
		{"bad-truncated-v3.hdr", 1000, "truncated v3 header", io.ErrUnexpectedEOF},
		{"bad-version.hdr", 4, "unknown COW version 7", nil},
		{"bad-align0.hdr", 24, "align == 0", nil},
		{"bad-noterm.hdr", 32, "not NUL-terminated", nil},
		{"bad-notcow.hdr", 0, "no COW magic", ErrNotCOW},
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			_, err := ReadHeader(path)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("ReadHeader(%s) = %v, want a *FormatError", tc.file, err)
			}
			if fe.Path != path || fe.Offset != tc.offset || !strings.Contains(fe.Reason, tc.reason) {
				t.Errorf("ReadHeader(%s) = %+v, want path %s, offset %d, reason containing %q", tc.file, fe, path, tc.offset, tc.reason)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("ReadHeader(%s) = %v, want it to wrap %v", tc.file, err, tc.is)
			}
		})
	}
}

// Every prefix of every golden file gives a header or a *FormatError,
// never a panic.
func TestTruncatedPrefixes(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.hdr")
	if len(files) < 12 {
		t.Fatalf("found %d header files in testdata, want the 6 good and 6 bad ones", len(files))
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for n := 0; n < len(b); n++ {
			_, err := ParseHeader(b[:n])
			var fe *FormatError
			if err != nil && !errors.As(err, &fe) {
				t.Fatalf("ParseHeader(%s[:%d]) = %v, want nil or *FormatError", f, n, err)
			}
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.hdr")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseHeader error %v is not a *FormatError", err)
			}
			return
		}
		if h.DataOffset() < h.BitmapOffset()+h.BitmapLen() || h.BitmapOffset() < h.HeaderSize() {
			t.Fatalf("inconsistent geometry for %+v", h)
		}
		if h.Version != 3 || h.Broken64 || h.Mtime > 1<<32-1 {
			return
		}
		out, err := h.MarshalBinary()
		if err != nil {
			return // e.g. sector size the writer refuses
		}
		h2, err := ParseHeader(out)
		if err != nil {
			t.Fatalf("ParseHeader(MarshalBinary(%+v)) = %v", h, err)
		}
		h.HostOrderMagic = false
		if !cmp.Equal(h, h2) {
			t.Fatalf("round trip: %+v != %+v", h2, h)
		}
	})
}
