package cow

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Info describes a COW file: its header, geometry, backing file and how
// much of the disk it holds.
type Info struct {
	Path         string `json:"path"`
	Version      int    `json:"version"`
	Broken64     bool   `json:"broken_64bit_layout,omitempty"`
	Backing      string `json:"backing_file"`
	HeaderSize   int64  `json:"backing_size"`
	HeaderMtime  int64  `json:"backing_mtime"`
	SectorSize   int    `json:"sector_size"`
	Alignment    int    `json:"alignment"`
	BitmapOffset int64  `json:"bitmap_offset"`
	BitmapLen    int64  `json:"bitmap_len"`
	DataOffset   int64  `json:"data_offset"`
	DiskSize     int64  `json:"disk_size"`

	BackingExists bool   `json:"backing_exists"`
	BackingSize   int64  `json:"backing_actual_size,omitempty"`
	BackingMtime  int64  `json:"backing_actual_mtime,omitempty"`
	SizeMatches   bool   `json:"size_matches"`
	MtimeMatches  bool   `json:"mtime_matches"`
	BackingError  string `json:"backing_error,omitempty"` // what is wrong and the fix

	ChangedSectors int64  `json:"changed_sectors"`
	ChangedBytes   int64  `json:"changed_bytes"`
	FileSize       int64  `json:"file_size"`
	DiskUsage      int64  `json:"disk_usage"` // bytes of disk blocks the file really uses
	InUseBy        string `json:"in_use_by,omitempty"`
	InUsePID       int    `json:"in_use_pid,omitempty"`
}

// Stat reads the COW file at path without locking it (a running
// instance's COW file can be inspected; the counts may then be stale).
func Stat(path string) (*Info, error) {
	d, err := Open(path, OpenOptions{NoLock: true, SkipBackingCheck: true})
	if d == nil {
		// A missing backing file still lets us describe the COW file.
		h, herr := ReadHeader(path)
		if herr != nil {
			return nil, herr
		}
		if _, serr := os.Stat(h.Backing); serr == nil {
			return nil, err
		}
		d = &Disk{path: path, h: h}
		f, ferr := os.Open(path)
		if ferr != nil {
			return nil, ferr
		}
		d.f = f
		d.bitmap = make([]byte, h.BitmapLen())
		if _, rerr := f.ReadAt(d.bitmap, h.BitmapOffset()); rerr != nil {
			f.Close()
			return nil, err
		}
	}
	defer d.Close()
	h := d.h
	in := &Info{Path: path, Version: h.Version, Broken64: h.Broken64, Backing: h.Backing, HeaderSize: h.Size,
		HeaderMtime: h.Mtime, SectorSize: h.SectorSize, Alignment: h.Alignment, BitmapOffset: h.BitmapOffset(),
		BitmapLen: h.BitmapLen(), DataOffset: h.DataOffset(), DiskSize: d.Size()}
	in.ChangedSectors = d.ChangedSectors()
	in.ChangedBytes = in.ChangedSectors * SectorSize
	if st, err := d.f.Stat(); err == nil {
		in.FileSize = st.Size()
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			in.DiskUsage = sys.Blocks * 512
		}
	}
	size, mtime, err := backingStat(h.Backing)
	if err == nil {
		in.BackingExists = true
		in.BackingSize, in.BackingMtime = size, mtime
		in.SizeMatches, in.MtimeMatches = size == h.Size, mtime == h.Mtime
	}
	if err := CheckBacking(path, h, h.Backing); err != nil {
		in.BackingError = err.Error()
	}
	if iu, _ := Probe(path, false); iu != nil {
		in.InUseBy, in.InUsePID = iu.Umid, iu.PID
	}
	return in, nil
}

// Problem is one finding of Check.
type Problem struct {
	Offset  int64  `json:"offset"` // byte offset in the COW file, -1 when not about a place in it
	Fatal   bool   `json:"fatal"`  // the kernel would refuse the file or read wrong data
	Message string `json:"message"`
}

// Check looks for structural problems in the COW file at path: a bad
// header, a truncated bitmap or data area, stray bits, and a missing or
// changed backing file. A file that is not a COW file gives a single fatal
// problem. The error is for failures to read, not for problems found.
func Check(path string) ([]Problem, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("check cow: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("check cow: %w", err)
	}
	var ps []Problem
	add := func(off int64, fatal bool, format string, args ...any) {
		ps = append(ps, Problem{Offset: off, Fatal: fatal, Message: fmt.Sprintf(format, args...)})
	}
	h, err := readHeader(f, path)
	var fe *FormatError
	if errors.As(err, &fe) {
		add(fe.Offset, true, "%s", fe.Reason)
		return ps, nil
	}
	if err != nil {
		return nil, err
	}
	_, offSS, _ := h.fieldOffsets()
	if h.SectorSize != SectorSize {
		add(offSS, true, "sector size %d: the ubd driver only works with 512", h.SectorSize)
	}
	if h.Version == 3 && h.Format != 0 {
		add(offSS+8, false, "cow_format %d is not 0 (the kernel ignores it)", h.Format)
	}
	if h.Broken64 {
		add(32, false, "v3 header in the broken 64-bit layout: the kernel reads it with a warning")
	}
	if !filepath.IsAbs(h.Backing) {
		add(8, false, "backing file name %q is relative: the kernel resolves it against the instance's working directory", h.Backing)
	}
	bo, bl, do := h.BitmapOffset(), h.BitmapLen(), h.DataOffset()
	if st.Size() < bo+bl {
		add(st.Size(), true, "file is %d bytes and ends inside the bitmap (%d bytes at %d)", st.Size(), bl, bo)
		return ps, nil
	}
	bm := make([]byte, bl)
	if _, err := f.ReadAt(bm, bo); err != nil {
		return nil, fmt.Errorf("check cow %s: read bitmap: %w", path, err)
	}
	sectors := h.Sectors()
	if h.Version == 3 && bl > 0 && sectors%8 != 0 && bm[bl-1]>>(sectors%8) != 0 {
		add(bo+bl-1, false, "bits set past the last sector (%d) in the bitmap's last byte (ignored)", sectors-1)
	}
	if h.SectorSize == SectorSize {
		limit := min(sectors, bl*8)
		for s := int64(0); s < limit; {
			e, set := runEnd(bm, s, limit)
			if set && do+e*SectorSize > st.Size() {
				first := max(s, (st.Size()-do)/SectorSize)
				add(bo+first/8, true, "sectors %d-%d are marked present but their data (from offset %d) is past the end of the %d-byte file",
					first, e-1, do+first*SectorSize, st.Size())
			}
			s = e
		}
	}
	if err := CheckBacking(path, h, h.Backing); err != nil {
		add(-1, true, "%v", err)
	}
	return ps, nil
}
