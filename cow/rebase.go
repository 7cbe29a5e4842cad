package cow

import (
	"context"
	"fmt"
	"os"
)

// RebaseOptions configures Rebase.
type RebaseOptions struct {
	// NewBacking is the backing file to point the COW file at; empty
	// keeps the current one (with RefreshMtime).
	NewBacking string
	// OldBacking is where the current backing file is, when it is not at
	// the header's path any more but its content is needed (safe rebase).
	OldBacking string
	// RefreshMtime records the backing file's current mtime without
	// looking at its content. It trusts that the content did not change;
	// if it did, the guest sees a mix of old and new sectors.
	RefreshMtime bool
	// Progress, when set, is called with the bytes compared and the total.
	Progress func(done, total int64)
}

// RebaseResult says what Rebase did.
type RebaseResult struct {
	Backing      string // the backing file now in the header
	Copied       int64  // sectors copied into the COW file (safe rebase)
	Compared     bool   // the contents were compared (safe rebase)
	RefreshMtime bool   // only the mtime (and maybe the path) were rewritten
}

// Rebase points the COW file at cowPath at another backing file, keeping
// the virtual disk's content:
//   - NewBacking with the same size and mtime as the header (a moved or
//     copied-with-times file): only the path changes, as the kernel does
//     when given cow,newbacking;
//   - NewBacking that differs: every sector not in the COW file whose
//     content differs between the old and new backing file is copied from
//     the old one into the COW file first (a safe rebase). The old backing
//     file must still match the header. Sizes must be equal.
//   - RefreshMtime: the header takes the backing file's current mtime.
//
// It refuses with ErrInUse while an instance has the COW file open.
func Rebase(ctx context.Context, cowPath string, opts RebaseOptions) (*RebaseResult, error) {
	h, err := ReadHeader(cowPath)
	if err != nil {
		return nil, err
	}
	if h.Version != 3 || h.Broken64 {
		return nil, fmt.Errorf("rebase %s: only standard v3 COW files can be rebased; merge it into a new image with `umlkit cow merge` instead", cowPath)
	}
	newPath := h.Backing
	if opts.NewBacking != "" {
		if newPath, err = Absolutize(opts.NewBacking); err != nil {
			return nil, fmt.Errorf("rebase %s: %w", cowPath, err)
		}
	}
	size, mtime, err := backingStat(newPath)
	if err != nil {
		return nil, fmt.Errorf("rebase %s: new backing file: %w", cowPath, err)
	}
	if size != h.Size {
		return nil, fmt.Errorf("rebase %s: %s has %d bytes but the COW file's disk has %d; a COW file can only be rebased onto a backing file of the same size",
			cowPath, newPath, size, h.Size)
	}
	res := &RebaseResult{Backing: newPath}
	if mtime == h.Mtime || opts.RefreshMtime {
		// Same file, moved; or the user vouches for its content.
		d, err := Open(cowPath, OpenOptions{Write: true, SkipBackingCheck: true, Backing: newPath})
		if err != nil {
			return nil, fmt.Errorf("rebase: %w", err)
		}
		defer d.Close()
		nh := *d.h
		nh.Backing, nh.Mtime = newPath, mtime
		if err := d.writeHeader(&nh); err != nil {
			return nil, fmt.Errorf("rebase %s: %w", cowPath, err)
		}
		res.RefreshMtime = mtime != h.Mtime
		return res, d.Sync()
	}
	if opts.OldBacking == "" {
		if ost, err := os.Stat(h.Backing); err == nil {
			if nst, err := os.Stat(newPath); err == nil && os.SameFile(ost, nst) {
				// Same file, new time: there is nothing to compare with.
				return nil, fmt.Errorf("rebase: %w", CheckBacking(cowPath, h, h.Backing))
			}
		}
	}
	// Safe rebase: the old backing file must be intact.
	d, err := Open(cowPath, OpenOptions{Write: true, Backing: opts.OldBacking})
	if err != nil {
		return nil, fmt.Errorf("rebase (the old backing file is needed to keep the disk's content): %w", err)
	}
	defer d.Close()
	nb, err := os.Open(newPath)
	if err != nil {
		return nil, fmt.Errorf("rebase %s: %w", cowPath, err)
	}
	defer nb.Close()
	if err := lockFile(nb, newPath, false); err != nil {
		return nil, fmt.Errorf("rebase %s: %w", cowPath, err)
	}
	n, err := d.copyDiffering(ctx, nb, opts.Progress)
	res.Copied, res.Compared = n, true
	if err != nil {
		return res, fmt.Errorf("rebase %s: %w (the COW file still works with its old backing file; run the command again)", cowPath, err)
	}
	if err := d.Sync(); err != nil {
		return res, fmt.Errorf("rebase %s: %w", cowPath, err)
	}
	nh := *d.h
	nh.Backing, nh.Mtime = newPath, mtime
	if err := d.writeHeader(&nh); err != nil {
		return res, fmt.Errorf("rebase %s: %w", cowPath, err)
	}
	return res, d.Sync()
}

// copyDiffering copies into the COW file every sector that is not in it
// and whose content differs between the current backing file and nb.
func (d *Disk) copyDiffering(ctx context.Context, nb *os.File, progress func(done, total int64)) (int64, error) {
	size := d.Size()
	oldBuf := make([]byte, chunkSize)
	newBuf := make([]byte, chunkSize)
	var copied int64
	for off := int64(0); off < size; off += chunkSize {
		if err := ctx.Err(); err != nil {
			return copied, err
		}
		n := int(min(chunkSize, size-off))
		if err := d.readSource(false, oldBuf[:n], off); err != nil {
			return copied, err
		}
		m, err := nb.ReadAt(newBuf[:n], off)
		if m < n {
			if m < 0 || err == nil {
				return copied, fmt.Errorf("read %s: short read", nb.Name())
			}
			clear(newBuf[m:n])
		}
		d.mu.RLock()
		bm := d.bitmap
		var runs []Range
		for s := int64(0); s < int64(n)/SectorSize; s++ {
			sec := off/SectorSize + s
			if isSet(bm, sec) {
				continue
			}
			a, b := oldBuf[s*SectorSize:(s+1)*SectorSize], newBuf[s*SectorSize:(s+1)*SectorSize]
			if string(a) == string(b) {
				continue
			}
			if k := len(runs) - 1; k >= 0 && runs[k].Off+runs[k].Len == s*SectorSize {
				runs[k].Len += SectorSize
			} else {
				runs = append(runs, Range{Off: s * SectorSize, Len: SectorSize})
			}
		}
		d.mu.RUnlock()
		for _, r := range runs {
			if _, err := d.WriteAt(oldBuf[r.Off:r.Off+r.Len], off+r.Off); err != nil {
				return copied, err
			}
			copied += r.Len / SectorSize
		}
		if progress != nil {
			progress(off+int64(n), size)
		}
	}
	return copied, nil
}
