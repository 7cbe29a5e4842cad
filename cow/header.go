package cow

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
)

// Magic is the COW magic number ("OOOM" when stored big-endian).
const Magic = 0x4F4F4F4D

// Sizes of the on-disk headers, as the kernel lays them out.
const (
	headerV1Size       = 280
	headerV2Size       = 4120
	headerV3Size       = 4128
	headerV3BrokenSize = 4136
	// MaxHeaderSize is how many bytes ReadHeader reads: the size of the
	// kernel's header union.
	MaxHeaderSize = headerV3BrokenSize
)

// Kernel defaults for new files.
const (
	SectorSize = 512  // the ubd I/O path always uses 512-byte sectors
	Alignment  = 4096 // the kernel's PAGE_SIZE
	// MaxBackingPath is the longest backing file name a v3 header holds.
	MaxBackingPath = 4095
)

// Header is a parsed COW header. Geometry methods give where the bitmap
// and the data live, exactly as the kernel computes them.
type Header struct {
	Version int // 1, 2 or 3
	// Broken64 marks a v3 header in the unpacked layout of 64-bit
	// writers before 2005 (the kernel reads it and says so).
	Broken64 bool
	// HostOrderMagic is set when the magic was stored little-endian, as
	// old x86 v1 writers did.
	HostOrderMagic bool
	Backing        string // backing file name (absolute when written by the kernel)
	Mtime          int64  // backing file mtime in seconds, as recorded (32 bits on disk)
	Size           int64  // backing file size in bytes
	SectorSize     int    // bytes per sector; 512 in practice
	Alignment      int    // v3 alignment of bitmap and data; v1/v2 use SectorSize
	Format         uint32 // v3 cow_format; 0 (bitmap) is the only one
}

// HeaderSize is the size of the on-disk header struct.
func (h *Header) HeaderSize() int64 {
	switch {
	case h.Version == 1:
		return headerV1Size
	case h.Version == 2:
		return headerV2Size
	case h.Broken64:
		return headerV3BrokenSize
	default:
		return headerV3Size
	}
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// BitmapOffset is where the bitmap starts in the file.
func (h *Header) BitmapOffset() int64 {
	if h.Version < 3 {
		return h.HeaderSize()
	}
	return roundUp(h.HeaderSize(), int64(h.Alignment))
}

// BitmapLen is the bitmap's length in bytes. For v1 and v2 it keeps the
// kernel's historical rounding, which can be one byte short.
func (h *Header) BitmapLen() int64 {
	ss := int64(h.SectorSize)
	if h.Version < 3 {
		return (h.Size + ss - 1) / (8 * ss)
	}
	sectors := (h.Size + ss - 1) / ss
	return (sectors + 7) / 8
}

// DataOffset is where sector 0's data lives in the file.
func (h *Header) DataOffset() int64 {
	align := int64(h.Alignment)
	if h.Version < 3 {
		align = int64(h.SectorSize)
	}
	return roundUp(h.BitmapOffset()+h.BitmapLen(), align)
}

// Sectors is the number of 512-byte sectors of the virtual disk (the
// backing size rounded up).
func (h *Header) Sectors() int64 { return (h.Size + SectorSize - 1) / SectorSize }

// ReadHeader reads and parses the header of the COW file at path.
func ReadHeader(path string) (*Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readHeader(f, path)
}

func readHeader(r io.ReaderAt, path string) (*Header, error) {
	buf := make([]byte, MaxHeaderSize)
	n, err := r.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read cow header %s: %w", path, err)
	}
	h, err := ParseHeader(buf[:n])
	if fe, ok := err.(*FormatError); ok {
		fe.Path = path
	}
	return h, err
}

// ParseHeader parses a COW header from the start of a file. b may be
// longer than the header. Errors are *FormatError.
func ParseHeader(b []byte) (*Header, error) {
	bad := func(off int64, err error, format string, args ...any) (*Header, error) {
		return nil, &FormatError{Offset: off, Reason: fmt.Sprintf(format, args...), Err: err}
	}
	if len(b) < 8 {
		return bad(int64(len(b)), io.ErrUnexpectedEOF, "short header: %d bytes, a COW header has at least 8", len(b))
	}
	h := &Header{}
	var version uint32
	switch {
	case binary.BigEndian.Uint32(b) == Magic:
		version = binary.BigEndian.Uint32(b[4:])
	case binary.LittleEndian.Uint32(b) == Magic:
		h.HostOrderMagic = true
		version = binary.LittleEndian.Uint32(b[4:])
	default:
		return bad(0, ErrNotCOW, "no COW magic (found % x): the kernel uses this file as a plain disk image", b[:4])
	}
	need := func(size int) error {
		if len(b) < size {
			return &FormatError{Offset: int64(len(b)), Err: io.ErrUnexpectedEOF,
				Reason: fmt.Sprintf("truncated v%d header: %d bytes, need %d", version, len(b), size)}
		}
		return nil
	}
	be, le := binary.BigEndian, binary.LittleEndian
	var pathField []byte
	var pathOff int64
	switch version {
	case 1:
		if err := need(headerV1Size); err != nil {
			return nil, err
		}
		h.Version = 1
		pathOff, pathField = 8, b[8:264]
		h.Mtime = int64(le.Uint32(b[264:]))
		h.Size = int64(le.Uint64(b[268:]))
		h.SectorSize = int(int32(le.Uint32(b[276:])))
		h.Alignment = h.SectorSize
	case 2:
		if err := need(headerV2Size); err != nil {
			return nil, err
		}
		h.Version = 2
		pathOff, pathField = 8, b[8:4104]
		h.Mtime = int64(be.Uint32(b[4104:]))
		h.Size = int64(be.Uint64(b[4108:]))
		h.SectorSize = int(int32(be.Uint32(b[4116:])))
		h.Alignment = h.SectorSize
	case 3:
		if err := need(headerV3Size); err != nil {
			return nil, err
		}
		h.Version = 3
		if be.Uint32(b[32:]) == 0 {
			// A real path never starts with four NULs: this is the
			// unpacked 64-bit layout.
			if err := need(headerV3BrokenSize); err != nil {
				return nil, err
			}
			h.Broken64 = true
			h.Mtime = int64(be.Uint32(b[8:]))
			h.Size = int64(be.Uint64(b[16:]))
			h.SectorSize = int(int32(be.Uint32(b[24:])))
			h.Alignment = int(int32(be.Uint32(b[28:])))
			h.Format = be.Uint32(b[32:])
			pathOff, pathField = 36, b[36:36+4096]
		} else {
			h.Mtime = int64(be.Uint32(b[8:]))
			h.Size = int64(be.Uint64(b[12:]))
			h.SectorSize = int(int32(be.Uint32(b[20:])))
			h.Alignment = int(int32(be.Uint32(b[24:])))
			h.Format = be.Uint32(b[28:])
			pathOff, pathField = 32, b[32:32+4096]
		}
	default:
		return bad(4, nil, "unknown COW version %d (the kernel reads 1, 2 and 3)", version)
	}
	nul := bytes.IndexByte(pathField, 0)
	if nul < 0 {
		return bad(pathOff, nil, "backing file name is not NUL-terminated within its %d bytes", len(pathField))
	}
	if nul == 0 {
		return bad(pathOff, nil, "empty backing file name")
	}
	h.Backing = string(pathField[:nul])
	if err := h.validate(); err != nil {
		return nil, err
	}
	return h, nil
}

// fieldOffsets gives the offsets of size, sectorsize and alignment, for
// error messages.
func (h *Header) fieldOffsets() (size, ss, align int64) {
	switch {
	case h.Version == 1:
		return 268, 276, 276
	case h.Version == 2:
		return 4108, 4116, 4116
	case h.Broken64:
		return 16, 24, 28
	default:
		return 12, 20, 24
	}
}

func (h *Header) validate() error {
	offSize, offSS, offAlign := h.fieldOffsets()
	bad := func(off int64, format string, args ...any) error {
		return &FormatError{Offset: off, Reason: fmt.Sprintf(format, args...)}
	}
	if h.SectorSize <= 0 {
		return bad(offSS, "invalid sector size %d", h.SectorSize)
	}
	if h.Alignment <= 0 {
		return bad(offAlign, "invalid alignment %d (the kernel rejects align == 0)", h.Alignment)
	}
	// Offsets are C ints in the kernel: data_offset must stay below 2^31,
	// which also bounds the size.
	if h.Size < 0 || h.Size > int64(math.MaxInt32)*8*int64(h.SectorSize) {
		return bad(offSize, "backing size %d is out of range", uint64(h.Size))
	}
	if d := h.DataOffset(); d >= math.MaxInt32 || d < 0 {
		return bad(offSize, "data offset %d does not fit the kernel's 32-bit offsets", d)
	}
	return nil
}

// MarshalBinary encodes h as a version 3 header (the only version this
// package writes), 4128 bytes. The Version and Broken64 fields are ignored.
func (h *Header) MarshalBinary() ([]byte, error) {
	if len(h.Backing) == 0 || len(h.Backing) > MaxBackingPath {
		return nil, fmt.Errorf("backing file name %q: length %d, must be 1 to %d bytes", h.Backing, len(h.Backing), MaxBackingPath)
	}
	if bytes.IndexByte([]byte(h.Backing), 0) >= 0 {
		return nil, fmt.Errorf("backing file name %q contains a NUL byte", h.Backing)
	}
	if h.Mtime < 0 || h.Mtime > math.MaxUint32 {
		return nil, fmt.Errorf("backing mtime %d does not fit the header's 32 bits", h.Mtime)
	}
	if h.Size < 0 {
		return nil, fmt.Errorf("negative backing size %d", h.Size)
	}
	if h.SectorSize <= 0 || h.Alignment <= 0 {
		return nil, fmt.Errorf("sector size %d and alignment %d must be positive", h.SectorSize, h.Alignment)
	}
	b := make([]byte, headerV3Size)
	be := binary.BigEndian
	be.PutUint32(b[0:], Magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[8:], uint32(h.Mtime))
	be.PutUint64(b[12:], uint64(h.Size))
	be.PutUint32(b[20:], uint32(h.SectorSize))
	be.PutUint32(b[24:], uint32(h.Alignment))
	be.PutUint32(b[28:], h.Format)
	copy(b[32:], h.Backing)
	return b, nil
}
