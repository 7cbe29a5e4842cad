package vswitch

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
)

const (
	ethHeaderLen = 14
	tpid8021Q    = 0x8100
	vlanTagLen   = 4
)

// frame is one received Ethernet frame, shared by reference between the
// queues it was forwarded to. The last holder returns it to the pool.
type frame struct {
	buf    []byte
	n      int
	vid    uint16
	tagged bool    // buf carries an 802.1Q tag at offset 12
	flood  bool    // the frame is being flooded (queue share limited)
	tag    [4]byte // the tag to insert when an egress port wants it tagged
	refs   atomic.Int32
	pool   *framePool
}

// release drops one reference and recycles the frame after the last.
func (f *frame) release() {
	if f.refs.Add(-1) == 0 {
		f.pool.put(f)
	}
}

// data returns the frame's bytes as received.
func (f *frame) data() []byte { return f.buf[:f.n] }

// length returns the frame's length on a port that wants it tagged or not.
func (f *frame) length(tagged bool) int {
	switch {
	case tagged == f.tagged:
		return f.n
	case tagged:
		return f.n + vlanTagLen
	default:
		return f.n - vlanTagLen
	}
}

type framePool struct {
	size int
	p    sync.Pool
}

func newFramePool(size int) *framePool {
	fp := &framePool{size: size}
	fp.p.New = func() any { return &frame{buf: make([]byte, size), pool: fp} }
	return fp
}

func (fp *framePool) get() *frame {
	f := fp.p.Get().(*frame)
	f.refs.Store(1)
	return f
}

func (fp *framePool) put(f *frame) { fp.p.Put(f) }

// macKey packs a VLAN and a MAC address into a map key.
func macKey(vid uint16, mac []byte) uint64 {
	_ = mac[5]
	return uint64(vid)<<48 | uint64(mac[0])<<40 | uint64(mac[1])<<32 |
		uint64(mac[2])<<24 | uint64(mac[3])<<16 | uint64(mac[4])<<8 | uint64(mac[5])
}

// parseVLAN reads the 802.1Q tag of a frame of at least ethHeaderLen
// bytes: its VLAN id and whether it has a tag. ok is false for a tagged
// frame too short to hold the tag and an ethertype.
func parseVLAN(b []byte) (vid uint16, tagged, ok bool) {
	if binary.BigEndian.Uint16(b[12:14]) != tpid8021Q {
		return 0, false, true
	}
	if len(b) < ethHeaderLen+vlanTagLen {
		return 0, true, false
	}
	return binary.BigEndian.Uint16(b[14:16]) & 0x0fff, true, true
}
