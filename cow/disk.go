package cow

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
)

// OpenOptions configures Open.
type OpenOptions struct {
	// Backing replaces the backing file named in the header (uml_moo -b,
	// or a COW made inside a chroot). Its size and mtime are still checked.
	Backing string
	// Write opens the COW file for writing (WriteAt, header updates).
	Write bool
	// SkipBackingCheck opens the disk even when the backing file's size or
	// mtime differ from the header. The content may then be inconsistent.
	SkipBackingCheck bool
	// NoLock takes no locks, for read-only inspection of a COW file a
	// running instance has open (what it reads may be stale).
	NoLock bool
	// WriteBacking opens the backing file for writing too, with a write
	// lock (merge into the backing file).
	WriteBacking bool
}

// Range is a byte range of the virtual disk.
type Range struct {
	Off, Len int64
}

// Disk is an open COW file seen as the virtual disk the kernel shows the
// guest. ReadAt and WriteAt are safe for concurrent use; Close must not
// run concurrently with them.
type Disk struct {
	path, backingPath string
	h                 *Header
	f, back           *os.File
	write             bool

	mu     sync.RWMutex
	bitmap []byte
}

// Open opens the COW file at path as a virtual disk. It returns a
// *FormatError for a malformed file, a *BackingError (ErrBackingChanged)
// when the backing file no longer matches, and an *InUseError (ErrInUse)
// when a running instance holds a conflicting lock.
func Open(path string, opts OpenOptions) (*Disk, error) {
	flag := os.O_RDONLY
	if opts.Write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open cow: %w", err)
	}
	d := &Disk{path: path, f: f, write: opts.Write}
	if err := d.open(opts); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Disk) open(opts OpenOptions) error {
	if !opts.NoLock {
		if err := lockFile(d.f, d.path, d.write); err != nil {
			return fmt.Errorf("open cow: %w", err)
		}
	}
	h, err := readHeader(d.f, d.path)
	if err != nil {
		return err
	}
	d.h = h
	if h.SectorSize != SectorSize {
		_, off, _ := h.fieldOffsets()
		return &FormatError{Path: d.path, Offset: off, Reason: fmt.Sprintf("sector size %d: the kernel's ubd driver only works with 512", h.SectorSize)}
	}
	if d.write && h.Version != 3 {
		return fmt.Errorf("open cow %s for writing: version %d files are read-only here; merge it into a new image with `umlkit cow merge`", d.path, h.Version)
	}
	st, err := d.f.Stat()
	if err != nil {
		return fmt.Errorf("open cow: %w", err)
	}
	bo, bl := h.BitmapOffset(), h.BitmapLen()
	if st.Size() < bo+bl {
		return &FormatError{Path: d.path, Offset: st.Size(), Err: io.ErrUnexpectedEOF,
			Reason: fmt.Sprintf("file ends inside the bitmap (bitmap at %d, %d bytes)", bo, bl)}
	}
	d.bitmap = make([]byte, bl)
	if _, err := d.f.ReadAt(d.bitmap, bo); err != nil {
		return fmt.Errorf("read cow bitmap %s: %w", d.path, err)
	}
	d.backingPath = h.Backing
	if opts.Backing != "" {
		d.backingPath = opts.Backing
	}
	if !opts.SkipBackingCheck {
		if err := CheckBacking(d.path, h, d.backingPath); err != nil {
			return err
		}
	}
	bflag := os.O_RDONLY
	if opts.WriteBacking {
		bflag = os.O_RDWR
	}
	d.back, err = os.OpenFile(d.backingPath, bflag, 0)
	if err != nil {
		return fmt.Errorf("open backing file of %s: %w", d.path, err)
	}
	if !opts.NoLock {
		if err := lockFile(d.back, d.backingPath, opts.WriteBacking); err != nil {
			return fmt.Errorf("open backing file of %s: %w", d.path, err)
		}
	}
	return nil
}

// CheckBacking compares the backing file's size and mtime with the header,
// as the kernel does (size first). It returns a *BackingError wrapping
// ErrBackingChanged on a mismatch, and says how to fix a missing file.
func CheckBacking(cowPath string, h *Header, backing string) error {
	size, mtime, err := backingStat(backing)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("backing file %s of %s does not exist; if it moved, run `umlkit cow rebase %s NEW-PATH`: %w",
			backing, cowPath, cowPath, err)
	}
	if err != nil {
		return fmt.Errorf("backing file of %s: %w", cowPath, err)
	}
	if size != h.Size || mtime != h.Mtime {
		return &BackingError{COW: cowPath, Backing: backing, HeaderSize: h.Size, ActualSize: size, HeaderMtime: h.Mtime, ActualMtime: mtime}
	}
	return nil
}

// Header returns a copy of the parsed header.
func (d *Disk) Header() Header { return *d.h }

// Path is the COW file's name.
func (d *Disk) Path() string { return d.path }

// BackingPath is the backing file in use (the header's, or the override).
func (d *Disk) BackingPath() string { return d.backingPath }

// Size is the virtual disk's size: the backing size rounded up to 512.
func (d *Disk) Size() int64 { return d.h.Sectors() * SectorSize }

// Close closes both files and releases the locks. It is idempotent.
func (d *Disk) Close() error {
	var err error
	if d.f != nil {
		err = d.f.Close()
		d.f = nil
	}
	if d.back != nil {
		if e := d.back.Close(); err == nil {
			err = e
		}
		d.back = nil
	}
	return err
}

// isSet reports whether sector s is in the COW file. Sectors past the
// bitmap (v1/v2 rounding) read from the backing file.
func isSet(bm []byte, s int64) bool {
	i := s >> 3
	return i < int64(len(bm)) && bm[i]&(1<<(s&7)) != 0
}

// runEnd returns the end (exclusive, at most limit) of the run of sectors
// starting at s that share s's bit.
func runEnd(bm []byte, s, limit int64) (int64, bool) {
	set := isSet(bm, s)
	var full byte
	if set {
		full = 0xff
	}
	e := s + 1
	for e < limit {
		if e&7 == 0 && e+8 <= limit {
			i := e >> 3
			if i >= int64(len(bm)) {
				if set {
					return e, set
				}
				return limit, set // clear to the end
			}
			if bm[i] == full {
				e += 8
				continue
			}
		}
		if isSet(bm, e) != set {
			break
		}
		e++
	}
	return e, set
}

// ChangedSectors counts the sectors held in the COW file.
func (d *Disk) ChangedSectors() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var n int64
	sectors := d.h.Sectors()
	for s := int64(0); s < sectors; {
		e, set := runEnd(d.bitmap, s, sectors)
		if set {
			n += e - s
		}
		s = e
	}
	return n
}

// Allocated returns the byte ranges of the virtual disk held in the COW
// file, in order, adjacent ones merged.
func (d *Disk) Allocated() []Range {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.allocatedLocked()
}

// ReadAt reads the virtual disk: sectors whose bit is set from the COW
// file, the others from the backing file (zeros past its end). It reads
// into p only; p is not retained.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.readAt(d.bitmap, p, off)
}

func (d *Disk) readAt(bm []byte, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset %d", d.path, off)
	}
	size := d.Size()
	if off >= size {
		return 0, io.EOF
	}
	var short error
	if int64(len(p)) > size-off {
		p = p[:size-off]
		short = io.EOF
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		s := pos / SectorSize
		endSector := (off + int64(len(p)) + SectorSize - 1) / SectorSize
		e, set := runEnd(bm, s, endSector)
		n := min(e*SectorSize-pos, int64(len(p)-done))
		if err := d.readSource(set, p[done:done+int(n)], pos); err != nil {
			return done, err
		}
		done += int(n)
	}
	return done, short
}

// readSource fills b from the COW data area (set) or the backing file at
// virtual offset pos.
func (d *Disk) readSource(set bool, b []byte, pos int64) error {
	if set {
		n, err := d.f.ReadAt(b, d.h.DataOffset()+pos)
		if n < len(b) {
			if err == io.EOF {
				return &FormatError{Path: d.path, Offset: d.h.DataOffset() + pos + int64(n), Err: io.ErrUnexpectedEOF,
					Reason: fmt.Sprintf("file ends before the data of sector %d, whose bitmap bit is set", (pos+int64(n))/SectorSize)}
			}
			return fmt.Errorf("read %s: %w", d.path, err)
		}
		return nil
	}
	n, err := d.back.ReadAt(b, pos)
	if n < len(b) {
		if err != io.EOF {
			return fmt.Errorf("read backing file %s: %w", d.backingPath, err)
		}
		clear(b[n:]) // past the end of the backing file
	}
	return nil
}

// WriteAt writes p to the virtual disk at off: the data goes to the COW
// file first, then the bitmap bits are set and written, as the kernel
// does. Partial sectors not yet in the COW file are filled from the
// backing file. The disk must have been opened with Write.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if !d.write {
		return 0, fmt.Errorf("write %s: opened read-only", d.path)
	}
	if off < 0 || off+int64(len(p)) > d.Size() {
		return 0, fmt.Errorf("write %s: range %d+%d is outside the %d-byte disk", d.path, off, len(p), d.Size())
	}
	if len(p) == 0 {
		return 0, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	first := off / SectorSize
	last := (off + int64(len(p)) - 1) / SectorSize
	done := 0
	var sec [SectorSize]byte
	for done < len(p) {
		pos := off + int64(done)
		s, within := pos/SectorSize, pos%SectorSize
		if within == 0 && len(p)-done >= SectorSize {
			n := (len(p) - done) / SectorSize * SectorSize
			if _, err := d.f.WriteAt(p[done:done+n], d.h.DataOffset()+pos); err != nil {
				return done, fmt.Errorf("write %s: %w", d.path, err)
			}
			done += n
			continue
		}
		if _, err := d.readAt(d.bitmap, sec[:], s*SectorSize); err != nil && err != io.EOF {
			return done, err
		}
		n := copy(sec[within:], p[done:])
		if _, err := d.f.WriteAt(sec[:], d.h.DataOffset()+s*SectorSize); err != nil {
			return done, fmt.Errorf("write %s: %w", d.path, err)
		}
		done += n
	}
	for s := first; s <= last; s++ {
		d.bitmap[s>>3] |= 1 << (s & 7)
	}
	if _, err := d.f.WriteAt(d.bitmap[first>>3:last>>3+1], d.h.BitmapOffset()+first>>3); err != nil {
		return done, fmt.Errorf("write %s bitmap: %w", d.path, err)
	}
	return done, nil
}

// Sync flushes the COW file to stable storage.
func (d *Disk) Sync() error { return d.f.Sync() }
