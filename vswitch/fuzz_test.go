package vswitch

import (
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzInput feeds arbitrary frames through the forwarding path, on an
// access port and on a trunk, and checks what comes out the other ports.
func FuzzInput(f *testing.F) {
	f.Add(eth(bcast, macA, "x"), false)
	f.Add(eth(macB, macA, "unicast"), false)
	f.Add(tagged(eth(bcast, macA, "t"), 20), true)
	f.Add(tagged(eth(bcast, macA, "t"), 0), true)
	f.Add([]byte{1, 2, 3}, false)
	f.Add(tagged(eth(bcast, macA, ""), 10)[:17], true)
	f.Fuzz(func(t *testing.T, b []byte, trunk bool) {
		if len(b) > DefaultMaxFrame+vlanTagLen {
			return
		}
		s := newSwitch(t, Config{})
		acc := attach(t, s, PortOptions{VLAN: 20})
		tr := attach(t, s, PortOptions{VLAN: 1, Trunk: []int{20, 30}})
		opts := PortOptions{Kind: "fuzz", VLAN: 20}
		if trunk {
			opts = PortOptions{Kind: "fuzz", VLAN: 1, Trunk: []int{20}}
		}
		near, _ := socketPair(t, unix.SOCK_SEQPACKET)
		p, err := s.newPort(near, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer p.release()
		fr := s.pool.get()
		fr.n = copy(fr.buf, b)
		ok := s.input(p, fr)
		p.flush()
		if ok != (len(b) >= ethHeaderLen && !(len(b) < 18 && b[12] == 0x81 && b[13] == 0)) {
			t.Fatalf("input(%x) = %v", b, ok)
		}
		buf := make([]byte, 10000)
		for _, q := range []*testPort{acc, tr} {
			q.c.SetReadBuffer(1 << 20)
			fd, _ := q.c.File()
			n, _, err := unix.Recvfrom(int(fd.Fd()), buf, unix.MSG_DONTWAIT)
			fd.Close()
			if err != nil {
				continue
			}
			if d := n - len(b); d != 0 && d != 4 && d != -4 {
				t.Fatalf("input(%x): port %d got %d bytes", b, q.id, n)
			}
			if n >= 12 && string(buf[:12]) != string(b[:12]) {
				t.Fatalf("input(%x): port %d got addresses %x", b, q.id, buf[:12])
			}
		}
	})
}
