package preflight

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
)

// cowMagic opens every UML COW file ("OOOM" big-endian).
const cowMagic = 0x4F4F4F4D

// cowHeader is the part of a COW header the checks need: the backing
// file's path, size and mtime as recorded when the COW file was made.
// (The cow package reads and writes the whole format.)
type cowHeader struct {
	Version int
	Backing string
	Size    uint64
	MTime   uint32
}

var (
	errShortHeader = errors.New("short COW header")
	errNoMagic     = errors.New("no COW magic")
)

// readCOWHeader reads the header of the COW file at path. It returns
// errNoMagic for a file that is not a COW file and errShortHeader for one
// cut short (an empty file among them).
func readCOWHeader(path string) (*cowHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, 4136) // the largest layout, broken v3
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return parseCOWHeader(buf[:n])
}

func parseCOWHeader(b []byte) (*cowHeader, error) {
	if len(b) < 8 {
		return nil, errShortHeader
	}
	var order binary.ByteOrder
	switch {
	case binary.BigEndian.Uint32(b) == cowMagic:
		order = binary.BigEndian
	case binary.LittleEndian.Uint32(b) == cowMagic:
		order = binary.LittleEndian // v1 from an x86 kernel, in host order
	default:
		return nil, errNoMagic
	}
	h := &cowHeader{Version: int(order.Uint32(b[4:]))}
	cstr := func(p []byte) string {
		if i := bytes.IndexByte(p, 0); i >= 0 {
			p = p[:i]
		}
		return string(p)
	}
	le := binary.LittleEndian // v1 fields are in host order whatever the magic
	switch {
	case h.Version == 1 && len(b) >= 280:
		h.Backing, h.MTime, h.Size = cstr(b[8:264]), le.Uint32(b[264:]), le.Uint64(b[268:])
	case h.Version == 2 && len(b) >= 4120:
		h.Backing, h.MTime, h.Size = cstr(b[8:4104]), order.Uint32(b[4104:]), order.Uint64(b[4108:])
	case h.Version == 3 && len(b) >= 36 && bytes.Equal(b[32:36], []byte{0, 0, 0, 0}):
		// "broken v3": the unpacked 64-bit layout of writers before 2005.
		if len(b) < 4136 {
			return nil, errShortHeader
		}
		h.MTime, h.Size, h.Backing = order.Uint32(b[8:]), order.Uint64(b[16:]), cstr(b[36:4132])
	case h.Version == 3 && len(b) >= 4128:
		h.MTime, h.Size, h.Backing = order.Uint32(b[8:]), order.Uint64(b[12:]), cstr(b[32:4128])
	case h.Version >= 1 && h.Version <= 3:
		return nil, errShortHeader
	default:
		return nil, errNoMagic
	}
	return h, nil
}
