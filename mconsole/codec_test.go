package mconsole

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func golden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testdata/request-version.bin is what uml_mconsole sent for "version";
// the reply and notification files were sent by the 6.1 kernel (the
// socket path in notify-socket.bin was rewritten).
func TestRequestGolden(t *testing.T) {
	want := golden(t, "request-version.bin")
	got, err := AppendRequest(nil, "version")
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("AppendRequest(version) = %x, %v; want uml_mconsole's %x", got, err, want)
	}
	r, err := ParseRequest(want)
	if err != nil || r != (Request{Version: 2, Text: "version"}) {
		t.Errorf("ParseRequest(golden) = %+v, %v", r, err)
	}
	// The kernel accepts a short request (header and text only).
	r, err = ParseRequest(want[:12+7])
	if err != nil || r.Text != "version" {
		t.Errorf("ParseRequest(short) = %+v, %v", r, err)
	}
}

func TestReplyGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Packet
	}{
		{"reply-version.bin", Packet{Text: "Linux uml 6.1.176 #1 Sat Jul  4 15:38:16 UTC 2026 x86_64"}},
		{"reply-remove-busy.bin", Packet{Err: -16, Text: "Device is currently open"}},
		{"reply-unknown.bin", Packet{Err: 1, Text: "Unknown command"}},
		{"reply-proc-0.bin", Packet{More: true, Text: "\n"}},
		{"reply-proc-1.bin", Packet{More: true, Text: "98.24 96.96\n"}},
		{"reply-proc-2.bin", Packet{}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b := golden(t, tc.file)
			p, err := ParsePacket(b)
			if err != nil {
				t.Fatalf("ParsePacket(%s) = %v", tc.file, err)
			}
			if diff := cmp.Diff(tc.want, p); diff != "" {
				t.Errorf("ParsePacket(%s) (-want +got):\n%s", tc.file, diff)
			}
			enc, err := AppendPacket(nil, p)
			if err != nil || !bytes.Equal(enc, b) {
				t.Errorf("AppendPacket(%+v) = %x, %v; want the kernel's %x", p, enc, err, b)
			}
		})
	}
}

func TestNotificationGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Event
	}{
		{"notify-socket.bin", Ready{Socket: "/home/u/.uml/mc1/mconsole"}},
		{"notify-panic.bin", Panic{Message: "VFS: Unable to mount root fs on unknown-block(98,0)"}},
		{"notify-user.bin", UserNotify{Data: []byte("user-notify-data")}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b := golden(t, tc.file)
			n, err := ParseNotification(b)
			if err != nil {
				t.Fatalf("ParseNotification(%s) = %v", tc.file, err)
			}
			ev, err := EventOf(n)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, ev); diff != "" {
				t.Errorf("EventOf(%s) (-want +got):\n%s", tc.file, diff)
			}
			enc, err := AppendNotification(nil, n)
			if err != nil || !bytes.Equal(enc, b) {
				t.Errorf("AppendNotification = %x, %v; want %x", enc, err, b)
			}
		})
	}
}

func TestBadDatagrams(t *testing.T) {
	req := golden(t, "request-version.bin")
	bad := func(b []byte, off int, v uint32) []byte {
		b = bytes.Clone(b)
		order.PutUint32(b[off:], v)
		return b
	}
	for _, tc := range []struct {
		name  string
		parse func([]byte) error
		in    []byte
		off   int
	}{
		{"request short", reqErr, req[:11], 0},
		{"request magic", reqErr, bad(req, 0, 0x12345678), 0},
		{"request len 512", reqErr, bad(req, 8, 512), 8},
		{"request len past end", reqErr, req[:14], 8},
		{"reply short", pktErr, []byte{0, 0, 0}, 0},
		{"reply text (version 0 answer)", pktErr, []byte("ERR Version 0 mconsole clients are not supported by this driver\x00"), 0},
		{"reply more 7", pktErr, bad(golden(t, "reply-version.bin"), 4, 7), 4},
		{"reply len past end", pktErr, bad(golden(t, "reply-version.bin"), 8, 100), 8},
		{"reply len over 512", pktErr, bad(golden(t, "reply-version.bin"), 8, 513), 8},
		{"notify short", ntfErr, golden(t, "notify-user.bin")[:15], 0},
		{"notify magic", ntfErr, bad(golden(t, "notify-user.bin"), 0, 1), 0},
		{"notify version", ntfErr, bad(golden(t, "notify-user.bin"), 4, 1), 4},
		{"notify len", ntfErr, bad(golden(t, "notify-user.bin"), 12, 17), 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.parse(tc.in)
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Offset != tc.off {
				t.Errorf("parse(%x) = %v, want a *FormatError at offset %d", tc.in, err, tc.off)
			}
		})
	}
	if _, err := AppendRequest(nil, string(make([]byte, MaxData))); err == nil {
		t.Error("AppendRequest(512 bytes) succeeded; the kernel refuses len >= 512")
	}
	if _, err := AppendRequest(nil, "log a\x00b"); err == nil {
		t.Error("AppendRequest with a NUL succeeded")
	}
	if _, err := EventOf(Notification{Type: 9}); err == nil {
		t.Error("EventOf(type 9) succeeded")
	}
}

func reqErr(b []byte) error { _, err := ParseRequest(b); return err }
func pktErr(b []byte) error { _, err := ParsePacket(b); return err }
func ntfErr(b []byte) error { _, err := ParseNotification(b); return err }

func addGoldenSeeds(f *testing.F) {
	ents, err := os.ReadDir("testdata")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		if filepath.Ext(e.Name()) == ".bin" {
			f.Add(golden(f, e.Name()))
		}
	}
	f.Add([]byte{})
	f.Add([]byte("ERR Version 0 mconsole clients are not supported by this driver"))
}

func FuzzParsePacket(f *testing.F) {
	addGoldenSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePacket(b)
		if err != nil {
			return
		}
		enc, err := AppendPacket(nil, p)
		if err != nil {
			t.Fatalf("AppendPacket(%+v) of a parsed packet: %v", p, err)
		}
		q, err := ParsePacket(enc)
		if err != nil || q != p {
			t.Fatalf("round trip %+v -> %x -> %+v, %v", p, enc, q, err)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	addGoldenSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		enc, err := AppendRequest(nil, r.Text)
		if err != nil {
			t.Fatalf("AppendRequest(%q) of a parsed request: %v", r.Text, err)
		}
		if len(enc) != RequestSize {
			t.Fatalf("AppendRequest gave %d bytes, want %d", len(enc), RequestSize)
		}
		q, err := ParseRequest(enc)
		if err != nil || q.Text != r.Text || q.Version != ProtocolVersion {
			t.Fatalf("round trip %+v -> %+v, %v", r, q, err)
		}
	})
}

func FuzzParseNotification(f *testing.F) {
	addGoldenSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseNotification(b)
		if err != nil {
			return
		}
		enc, err := AppendNotification(nil, n)
		if err != nil {
			t.Fatalf("AppendNotification(%+v): %v", n, err)
		}
		if !bytes.Equal(enc, b[:len(enc)]) {
			t.Fatalf("re-encoding %x gave %x", b, enc)
		}
		if ev, err := EventOf(n); err == nil && ev.Type() != n.Type {
			t.Fatalf("EventOf(%v) has type %v", n.Type, ev.Type())
		}
	})
}
