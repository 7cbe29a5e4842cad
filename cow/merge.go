package cow

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// In-place merges and rebases move data in sequential chunks; zero
// blocks become holes.
const (
	chunkSize = 128 << 10
	blockSize = 4096 // holes are made at file system block granularity
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
// merge leaves out untouched.
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
	if err := copyDisk(ctx, d, f, size, opts.Progress, !opts.NoSync); err != nil {
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
	// Writeback of what went into the backing file is started every
	// writebackStep bytes, so the final fsync has little left to wait for.
	writeback := true
	var pendingFrom, pending int64
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
			if pending == 0 {
				pendingFrom = off
			}
			if pending += int64(n); writeback && pending >= writebackStep {
				writeback = startWriteback(d.back, pendingFrom, off+int64(n)-pendingFrom)
				pending = 0
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
