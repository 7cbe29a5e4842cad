package agent

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func encode(t testing.TB, frames ...frame) []byte {
	var b bytes.Buffer
	w := newWriter(&b, 0)
	for _, f := range frames {
		if err := w.send(f.typ, f.id, f.payload); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func TestFrameRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte("x\x00\x1b"), MaxPayload/3+10)
	in := encode(t, frame{tHello, 0, []byte(`{"version":1}`)}, frame{tStdout, 7, big}, frame{tStdin, 3, nil})
	// Garbage first, as an echoing serial line would produce.
	rd := newReader(io.MultiReader(bytes.NewReader([]byte("noise\r\n\xA6junk")), bytes.NewReader(in)), nil)
	if bytes.IndexByte(in, 0) >= 0 {
		t.Error("encoded frames contain a NUL byte")
	}
	var got []frame
	for {
		f, err := rd.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f)
	}
	if len(got) != 4 || got[0].typ != tHello || got[1].id != 7 || len(got[1].payload)+len(got[2].payload) != len(big) || got[3].typ != tStdin || len(got[3].payload) != 0 {
		t.Fatalf("frames = %d %+v", len(got), got[0])
	}
	if rd.skipped != len("noise\r\n\xA6junk") {
		t.Errorf("skipped %d bytes, want %d", rd.skipped, len("noise\r\n\xA6junk"))
	}
}

func TestTruncatedFrame(t *testing.T) {
	in := encode(t, frame{tStdout, 1, []byte("hello")})
	_, err := newReader(bytes.NewReader(in[:len(in)-2]), nil).next()
	if !errors.Is(err, ErrFrame) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("next() on a cut frame = %v, want ErrFrame wrapping io.ErrUnexpectedEOF", err)
	}
}

func FuzzReader(f *testing.F) {
	f.Add(encode(f, frame{tHello, 0, []byte(`{}`)}, frame{tExit, 2, []byte(`{"code":1}`)}))
	f.Add([]byte{0xA6, 0x5E, 3, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0xA6, 0x5E, 0xA6, 0x5E, 4, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		rd := newReader(bytes.NewReader(b), nil)
		for i := 0; i < 1000; i++ {
			f, err := rd.next()
			if err != nil {
				return
			}
			if f.typ == 0 || f.typ > maxType || len(f.payload) > MaxPayload {
				t.Fatalf("bad frame accepted: %+v", f)
			}
		}
	})
}
