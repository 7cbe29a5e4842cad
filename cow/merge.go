package cow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"
)

// Merges move data in large sequential pieces; zero blocks become holes.
const (
	chunkSize = 1 << 20
	blockSize = 4096 // holes are made at file system block granularity
	inFlight  = 4    // chunks between the reader and the writer
)

var zeroBlock [blockSize]byte

// MergeOptions configures Merge.
type MergeOptions struct {
	// Progress, when set, is called after each piece with the bytes done
	// and the total. It runs on the merging goroutine.
	Progress func(done, total int64)
	// NoSync skips the fsync before the rename. Faster; after a crash the
	// target name may hold an incomplete image.
	NoSync bool
	// WholeSectors drops a trailing partial sector of the backing size
	// from the output, as uml_moo does. Otherwise the output has the
	// disk's size (the backing size rounded up to 512).
	WholeSectors bool
	// Direct writes straight into out, truncating it, instead of a
	// temporary file renamed over it (uml_moo's behaviour).
	Direct bool
}

// Merge writes the virtual disk d to a new sparse image at out: blocks
// that are all zeros are left as holes. It writes a temporary file in the
// same directory and renames it over out at the end, so an interrupted
// merge leaves out untouched. Reading and writing overlap, in 1 MiB pieces.
func Merge(ctx context.Context, d *Disk, out string, opts MergeOptions) (err error) {
	if ost, err := os.Stat(out); err == nil {
		for _, f := range []*os.File{d.f, d.back} {
			if st, err := f.Stat(); err == nil && os.SameFile(st, ost) {
				return fmt.Errorf("merge %s: the output %s is the COW file or its backing file; to write into the backing file use merge --into-backing", d.path, out)
			}
		}
	}
	size := d.Size()
	if opts.WholeSectors {
		size = d.h.Size / SectorSize * SectorSize
	}
	var f *os.File
	if opts.Direct {
		f, err = os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	} else {
		f, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	}
	if err != nil {
		return fmt.Errorf("merge %s: %w", d.path, err)
	}
	name := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil && !opts.Direct {
			os.Remove(name)
		}
	}()
	if err := copyDisk(ctx, d, f, size, opts.Progress); err != nil {
		return fmt.Errorf("merge %s into %s: %w", d.path, out, err)
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("merge %s: %w", d.path, err)
	}
	if !opts.NoSync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("merge %s: %w", d.path, err)
		}
	}
	if !opts.Direct {
		if err := f.Chmod(0o644); err != nil {
			return fmt.Errorf("merge %s: %w", d.path, err)
		}
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return fmt.Errorf("merge %s: %w", d.path, cerr)
	}
	if !opts.Direct {
		if err := os.Rename(name, out); err != nil {
			return fmt.Errorf("merge %s: %w", d.path, err)
		}
	}
	return nil
}

// copyDisk copies d[0:size) to out, leaving zero blocks as holes. It maps
// both files and writes straight from the mappings: each byte is scanned
// for zeros and copied once, in runs that stay in the CPU cache between
// the two. Where mapping fails it falls back to reading (copyDiskRead).
func copyDisk(ctx context.Context, d *Disk, out *os.File, size int64, progress func(done, total int64)) (err error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	cm, err := mapFile(d.f)
	if err != nil {
		return copyDiskRead(ctx, d, out, size, progress)
	}
	defer syscall.Munmap(cm)
	bm, err := mapFile(d.back)
	if err != nil {
		return copyDiskRead(ctx, d, out, size, progress)
	}
	defer syscall.Munmap(bm)
	// A file truncated under us would fault: make that an error.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s or %s changed size during the merge: %v", d.path, d.backingPath, r)
		}
	}()
	m := &mapCopier{d: d, out: out, cow: cm, back: bm, dataOff: d.h.DataOffset(), scratch: make([]byte, blockSize)}
	for off := int64(0); off < size; off += chunkSize {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(off+chunkSize, size)
		if err := m.chunk(off, end); err != nil {
			return err
		}
		if progress != nil {
			progress(end, size)
		}
	}
	return nil
}

// mapFile maps f whole, read-only; nil for an empty file.
func mapFile(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("empty file")
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	_ = syscall.Madvise(m, syscall.MADV_SEQUENTIAL)
	return m, nil
}

// madvPopulateRead (Linux 5.14) fills the page tables of a range in one
// call instead of one page fault per 64 KiB.
const madvPopulateRead = 22

type mapCopier struct {
	d         *Disk
	out       *os.File
	cow, back []byte
	dataOff   int64
	scratch   []byte
	// The pending write: src[srcOff:srcOff+n] goes to outOff.
	src            []byte
	srcOff, outOff int64
	n              int64
}

// maxRun bounds a write so that what was scanned is still in cache.
const maxRun = 256 << 10

func (m *mapCopier) flush() error {
	if m.n == 0 {
		return nil
	}
	_, err := m.out.WriteAt(m.src[m.srcOff:m.srcOff+m.n], m.outOff)
	m.n = 0
	return err
}

// add queues src[srcOff:srcOff+n] for outOff, merging it with the pending
// write when both are contiguous.
func (m *mapCopier) add(src []byte, srcOff, outOff, n int64) error {
	if m.n > 0 && len(src) > 0 && &src[0] == &m.src[0] && m.srcOff+m.n == srcOff && m.outOff+m.n == outOff && m.n < maxRun {
		m.n += n
		return nil
	}
	if err := m.flush(); err != nil {
		return err
	}
	m.src, m.srcOff, m.outOff, m.n = src, srcOff, outOff, n
	return nil
}

func populate(b []byte, off, n int64) {
	start := off &^ (blockSize - 1)
	end := min(off+n, int64(len(b)))
	if start < end {
		_ = syscall.Madvise(b[start:end], madvPopulateRead)
	}
}

// chunk copies virtual disk [off, end) (off block-aligned).
func (m *mapCopier) chunk(off, end int64) error {
	bmap := m.d.bitmap
	// Prefault the sources of the chunk, one run at a time.
	for s := off / SectorSize; s*SectorSize < end; {
		e, set := runEnd(bmap, s, (end+SectorSize-1)/SectorSize)
		if set {
			populate(m.cow, m.dataOff+s*SectorSize, (e-s)*SectorSize)
		} else {
			populate(m.back, s*SectorSize, (e-s)*SectorSize)
		}
		s = e
	}
	for blk := off; blk < end; blk += blockSize {
		bend := min(blk+blockSize, end)
		n := bend - blk
		src, srcOff, err := m.source(blk, bend)
		if err != nil {
			return err
		}
		if bytes.Equal(src[srcOff:srcOff+n], zeroBlock[:n]) {
			if err := m.flush(); err != nil {
				return err
			}
			continue
		}
		if err := m.add(src, srcOff, blk, n); err != nil {
			return err
		}
		if &src[0] == &m.scratch[0] {
			if err := m.flush(); err != nil { // the scratch block is reused
				return err
			}
		}
	}
	return m.flush()
}

// source returns where the bytes of block [blk, bend) are: a mapping and
// an offset in it, or the scratch buffer when the block mixes sources or
// runs past the end of the backing file.
func (m *mapCopier) source(blk, bend int64) ([]byte, int64, error) {
	s0, s1 := blk/SectorSize, (bend+SectorSize-1)/SectorSize
	e, set := runEnd(m.d.bitmap, s0, s1)
	if e == s1 {
		if set {
			if m.dataOff+bend > int64(len(m.cow)) {
				return nil, 0, &FormatError{Path: m.d.path, Offset: int64(len(m.cow)), Err: io.ErrUnexpectedEOF,
					Reason: fmt.Sprintf("file ends before the data of sector %d, whose bitmap bit is set", (int64(len(m.cow))-m.dataOff)/SectorSize)}
			}
			return m.cow, m.dataOff + blk, nil
		}
		if bend <= int64(len(m.back)) {
			return m.back, blk, nil
		}
	}
	b := m.scratch[:bend-blk]
	if _, err := m.d.readAt(m.d.bitmap, b, blk); err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	return m.scratch, 0, nil
}

type piece struct {
	buf []byte
	off int64
	n   int
}

// copyDiskRead is copyDisk with pread: one goroutine reads pieces while
// the caller's goroutine writes them. The caller holds d.mu.
func copyDiskRead(ctx context.Context, d *Disk, out *os.File, size int64, progress func(done, total int64)) error {
	free := make(chan []byte, inFlight)
	for range inFlight {
		free <- make([]byte, chunkSize)
	}
	full := make(chan piece, inFlight)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(full)
		for off := int64(0); off < size; off += chunkSize {
			var buf []byte
			select {
			case buf = <-free:
			case <-gctx.Done():
				return gctx.Err()
			}
			n := int(min(chunkSize, size-off))
			if _, err := d.readAt(d.bitmap, buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			full <- piece{buf, off, n}
		}
		return nil
	})
	g.Go(func() error {
		for p := range full {
			if err := writeSparse(out, p.buf[:p.n], p.off); err != nil {
				// Drain so the reader does not block.
				go func() {
					for range full {
					}
				}()
				return err
			}
			free <- p.buf
			if progress != nil {
				progress(p.off+int64(p.n), size)
			}
		}
		return nil
	})
	return g.Wait()
}

// writeSparse writes the non-zero blocks of b at off, leaving zero blocks
// unwritten (holes in a new file). off must be block-aligned.
func writeSparse(f *os.File, b []byte, off int64) error {
	start := -1 // start of the current run of non-zero blocks
	for i := 0; i < len(b); i += blockSize {
		end := min(i+blockSize, len(b))
		zero := bytes.Equal(b[i:end], zeroBlock[:end-i])
		switch {
		case !zero && start < 0:
			start = i
		case zero && start >= 0:
			if _, err := f.WriteAt(b[start:i], off+int64(start)); err != nil {
				return err
			}
			start = -1
		}
	}
	if start >= 0 {
		if _, err := f.WriteAt(b[start:], off+int64(start)); err != nil {
			return err
		}
	}
	return nil
}

// IntoBackingOptions configures MergeIntoBacking.
type IntoBackingOptions struct {
	// Backing replaces the header's backing file name (uml_moo -b).
	Backing string
	// KeepCOW leaves the COW file as it is (uml_moo -d). By default the
	// COW file is emptied and its header takes the backing file's new
	// mtime, so it stays a valid, empty overlay of the merged image.
	KeepCOW bool
	// Progress, when set, is called with the bytes done and the total.
	Progress func(done, total int64)
}

// journalSuffix names the file that marks an in-place merge in progress.
// While it exists, a rerun accepts the backing file's changed mtime (it
// was changed by the interrupted merge) and completes the merge.
const journalSuffix = ".merging"

// MergeIntoBacking writes the sectors held in the COW file at cowPath into
// its backing file. Every other COW file over that backing file becomes
// stale (its mtime check fails): find them first with FindCOWs. An
// interrupted merge is completed by calling MergeIntoBacking again.
func MergeIntoBacking(ctx context.Context, cowPath string, opts IntoBackingOptions) error {
	h, err := ReadHeader(cowPath)
	if err != nil {
		return err
	}
	backing := h.Backing
	if opts.Backing != "" {
		backing = opts.Backing
	}
	journal := cowPath + journalSuffix
	resuming := false
	if b, err := os.ReadFile(journal); err == nil {
		j := parseJournal(b)
		if j["backing"] != backing || j["size"] != strconv.FormatInt(h.Size, 10) {
			return fmt.Errorf("merge %s: %s records an interrupted merge into %s (size %s), not into %s; remove it if that merge was finished by other means",
				cowPath, journal, j["backing"], j["size"], backing)
		}
		resuming = true
	}
	d, err := Open(cowPath, OpenOptions{Backing: backing, Write: !opts.KeepCOW, WriteBacking: true, SkipBackingCheck: resuming})
	if err != nil {
		return fmt.Errorf("merge into backing file: %w", err)
	}
	defer d.Close()
	if resuming {
		if size, _, err := backingStat(backing); err != nil || size != h.Size {
			return fmt.Errorf("merge %s: backing file %s no longer has the size %d the merge started with", cowPath, backing, h.Size)
		}
	} else if !opts.KeepCOW {
		j := fmt.Sprintf("backing=%s\nsize=%d\nmtime=%d\n", backing, h.Size, h.Mtime)
		if err := writeSynced(journal, []byte(j)); err != nil {
			return fmt.Errorf("merge %s: %w", cowPath, err)
		}
	}
	if err := copyIntoBacking(ctx, d, opts.Progress); err != nil {
		return fmt.Errorf("merge %s into %s: %w (run the same command again to complete it)", cowPath, backing, err)
	}
	if err := d.back.Sync(); err != nil {
		return fmt.Errorf("merge %s: sync %s: %w", cowPath, backing, err)
	}
	if opts.KeepCOW {
		return nil
	}
	if err := d.reset(); err != nil {
		return fmt.Errorf("merge %s: reset the COW file: %w (run the same command again to complete it)", cowPath, err)
	}
	if err := os.Remove(journal); err != nil {
		return fmt.Errorf("merge %s: %w", cowPath, err)
	}
	return nil
}

func parseJournal(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func writeSynced(name string, b []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// copyIntoBacking writes the COW's sectors over the backing file. A zero
// block is written only where the backing block is not already zero, so a
// sparse backing file stays sparse.
func copyIntoBacking(ctx context.Context, d *Disk, progress func(done, total int64)) error {
	var total, done int64
	ranges := d.allocatedLocked()
	for i := range ranges {
		// The last sector may reach past the end of the backing file.
		ranges[i].Len = min(ranges[i].Len, d.h.Size-ranges[i].Off)
		total += ranges[i].Len
	}
	buf := make([]byte, chunkSize)
	old := make([]byte, chunkSize)
	for _, r := range ranges {
		for off := r.Off; off < r.Off+r.Len; off += chunkSize {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(chunkSize, r.Off+r.Len-off))
			b := buf[:n]
			if err := d.readSource(true, b, off); err != nil {
				return err
			}
			if err := writeOver(d.back, b, old[:n], off); err != nil {
				return err
			}
			done += int64(n)
			if progress != nil {
				progress(done, total)
			}
		}
	}
	return nil
}

// writeOver writes b at off in f, skipping zero blocks whose current
// content is zero too. old is scratch space of len(b).
func writeOver(f *os.File, b, old []byte, off int64) error {
	haveOld := false
	start := -1
	flush := func(end int) error {
		if start >= 0 {
			if _, err := f.WriteAt(b[start:end], off+int64(start)); err != nil {
				return err
			}
			start = -1
		}
		return nil
	}
	for i := 0; i < len(b); i += blockSize {
		end := min(i+blockSize, len(b))
		write := true
		if bytes.Equal(b[i:end], zeroBlock[:end-i]) {
			if !haveOld {
				n, err := f.ReadAt(old, off)
				if err != nil && n < len(old) {
					clear(old[n:])
				}
				haveOld = true
			}
			write = !bytes.Equal(old[i:end], zeroBlock[:end-i])
		}
		if write && start < 0 {
			start = i
		} else if !write {
			if err := flush(i); err != nil {
				return err
			}
		}
	}
	return flush(len(b))
}

func (d *Disk) allocatedLocked() []Range {
	var rs []Range
	sectors := d.h.Sectors()
	for s := int64(0); s < sectors; {
		e, set := runEnd(d.bitmap, s, sectors)
		if set {
			rs = append(rs, Range{Off: s * SectorSize, Len: (e - s) * SectorSize})
		}
		s = e
	}
	return rs
}

// reset empties the COW file after its sectors went into the backing
// file: the header takes the backing file's new mtime, the bitmap is
// cleared and the data area is punched out.
func (d *Disk) reset() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	size, mtime, err := backingStat(d.backingPath)
	if err != nil {
		return err
	}
	nh := *d.h
	nh.Mtime, nh.Size, nh.Backing = mtime, size, d.backingPath
	if err := d.writeHeader(&nh); err != nil {
		return err
	}
	clear(d.bitmap)
	if _, err := d.f.WriteAt(d.bitmap, d.h.BitmapOffset()); err != nil {
		return err
	}
	// Free the data blocks; where punching holes is not supported the
	// stale data is harmless (the bitmap hides it).
	st, err := d.f.Stat()
	if err == nil && st.Size() > d.h.DataOffset() {
		const punchHole, keepSize = 0x02, 0x01
		_ = syscall.Fallocate(int(d.f.Fd()), punchHole|keepSize, d.h.DataOffset(), st.Size()-d.h.DataOffset())
	}
	return d.f.Sync()
}

// writeHeader rewrites the v3 header in place; the geometry must not change.
func (d *Disk) writeHeader(nh *Header) error {
	if d.h.Version != 3 || d.h.Broken64 {
		return fmt.Errorf("%s: only standard v3 headers can be rewritten", d.path)
	}
	if nh.Size != d.h.Size || nh.SectorSize != d.h.SectorSize || nh.Alignment != d.h.Alignment {
		return fmt.Errorf("%s: the new header would change the file's geometry", d.path)
	}
	b, err := nh.MarshalBinary()
	if err != nil {
		return err
	}
	if _, err := d.f.WriteAt(b, 0); err != nil {
		return err
	}
	nh.Version = 3
	d.h = nh
	return nil
}

// FindCOWs returns the COW files in dirs (not recursive) whose backing file
// is backing (same name or same file), excluding the files in except.
// Unreadable files and files that are not COW files are skipped.
func FindCOWs(backing string, dirs []string, except ...string) ([]string, error) {
	bst, err := os.Stat(backing)
	if err != nil {
		return nil, err
	}
	var skip []os.FileInfo
	for _, e := range except {
		if st, err := os.Stat(e); err == nil {
			skip = append(skip, st)
		}
	}
	var found []string
	seen := map[string]bool{}
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("look for COW files: %w", err)
		}
	next:
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			p := filepath.Join(dir, e.Name())
			st, err := os.Stat(p)
			if err != nil || os.SameFile(st, bst) {
				continue
			}
			for _, s := range skip {
				if os.SameFile(st, s) {
					continue next
				}
			}
			h, err := ReadHeader(p)
			if err != nil {
				continue
			}
			if h.Backing != backing {
				hst, err := os.Stat(h.Backing)
				if err != nil || !os.SameFile(hst, bst) {
					continue
				}
			}
			if abs, err := filepath.Abs(p); err == nil && !seen[abs] {
				seen[abs] = true
				found = append(found, p)
			}
		}
	}
	return found, nil
}
