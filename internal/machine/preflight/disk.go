package preflight

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/umlkit/umlkit/cow"
	"github.com/umlkit/umlkit/internal/machine/cmdline"
)

func checkDisks(r *Report, c *cmdline.CommandLine, opts Options) {
	disks := c.Disks()
	// A ubd0= that did not parse is a syntax problem already; the
	// default ./root_fs only applies when there is none at all.
	defaulted := c.Disk(0) == nil
	for _, a := range c.Args {
		if o, ok := a.(*cmdline.Other); ok && (strings.HasPrefix(o.Text, "ubd0") || strings.HasPrefix(o.Text, "ubda")) {
			defaulted = false
		}
	}
	if defaulted {
		disks = append([]*cmdline.Disk{{Index: 0, File: cmdline.DefaultRoot}}, disks...)
	}
	for i, d := range disks {
		checkDisk(r, c, d, opts, defaulted && i == 0)
	}
	checkTwice(r, disks, opts)
}

// checkTwice reports a host file that two disks of this instance open
// when at least one writes it: the kernel's locks do not conflict within
// one process, so nothing stops the two devices from corrupting it.
func checkTwice(r *Report, disks []*cmdline.Disk, opts Options) {
	type open struct {
		d     *cmdline.Disk
		path  string
		write bool
		fi    os.FileInfo
	}
	var opens []open
	add := func(d *cmdline.Disk, p string, write bool) {
		p = opts.abs(p)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			opens = append(opens, open{d, p, write, fi})
		}
	}
	for _, d := range disks {
		if d.Shared {
			continue
		}
		add(d, d.File, !d.ReadOnly)
		if d.COW() {
			add(d, d.Backing, false)
		}
	}
	for i, a := range opens {
		for _, b := range opens[i+1:] {
			if a.d == b.d || !(a.write || b.write) || !os.SameFile(a.fi, b.fi) {
				continue
			}
			r.add(&Problem{Check: "disk-twice", Arg: b.d.String(), Err: ErrLocked,
				Message: fmt.Sprintf("%s and %s both open %s, and one of them writes it: the kernel would not stop this and the file would be corrupted", a.d.Key(), b.d.Key(), a.path),
				Fix:     "give each disk its own file (a COW file over a shared image: ubdN=NAME.cow,IMAGE)"})
		}
	}
}

// diskRun suggests the command line with disk d replaced by a COW file
// over image.
func diskRun(opts Options, d *cmdline.Disk, image string) string {
	return fmt.Sprintf("%s ubd%d=NAME.cow,%s ...", opts.run(), d.Index, image)
}

func checkDisk(r *Report, c *cmdline.CommandLine, d *cmdline.Disk, opts Options, defaulted bool) {
	arg := d.String()
	file := opts.abs(d.File)
	if !d.COW() {
		st, err := os.Stat(file)
		if err != nil {
			p := &Problem{Check: "disk-missing", Arg: arg, Err: ErrMissing,
				Message: fmt.Sprintf("disk %s: %s does not exist", d.Key(), file),
				Fix:     "give the path of an existing image file"}
			switch {
			case !errors.Is(err, fs.ErrNotExist):
				p.Err, p.Message, p.Fix = err, fmt.Sprintf("disk %s: %v", d.Key(), err), ""
			case defaulted:
				p.Arg = ""
				p.Message = fmt.Sprintf("no ubd0= is given, so the kernel uses %s as the root disk, and it does not exist: the kernel would panic (VFS: Unable to mount root fs)", file)
				p.Fix = fmt.Sprintf("give the root image: %s ubd0=IMAGE ..., or a COW file over it: %s ubd0=NAME.cow,IMAGE ...", opts.run(), opts.run())
			case d.Index == 0:
				p.Message = fmt.Sprintf("root disk %s does not exist: the kernel would panic (VFS: Unable to mount root fs)", file)
				p.Fix = "give the path of an existing root image (umlkit image build makes one)"
			}
			r.add(p)
			return
		}
		if st.IsDir() {
			r.add(&Problem{Check: "disk-missing", Arg: arg, Err: ErrMissing,
				Message: fmt.Sprintf("disk %s: %s is a directory, not an image file", d.Key(), file)})
			return
		}
		if !d.Shared {
			checkLock(r, c, d, opts, file, !d.ReadOnly, "")
		}
		if d.NoCOW {
			return
		}
		// A single file with a COW header uses the backing file it names.
		if h, err := cow.ReadHeader(file); err == nil {
			checkBacking(r, c, d, opts, file, h, "")
		}
		return
	}

	backing := opts.abs(d.Backing)
	if _, err := os.Stat(backing); err != nil {
		p := &Problem{Check: "disk-missing", Arg: arg, Err: ErrMissing,
			Message: fmt.Sprintf("disk %s: backing file %s: %v", d.Key(), backing, errors.Unwrap(err)),
			Fix:     "give the path of an existing image as the second file"}
		if d.Index == 0 {
			p.Message += ": the kernel would panic (VFS: Unable to mount root fs)"
		}
		r.add(p)
		return
	}
	st, err := os.Stat(file)
	if errors.Is(err, fs.ErrNotExist) {
		// The kernel makes the COW file; its directory must be there.
		dir := filepath.Dir(file)
		if aerr := syscall.Access(dir, 2 /* W_OK */); aerr != nil {
			r.add(&Problem{Check: "cow-dir", Arg: arg, Err: ErrMissing,
				Message: fmt.Sprintf("disk %s: the kernel cannot create COW file %s (%s: %v)", d.Key(), file, dir, aerr),
				Fix:     "mkdir -p " + dir + ", or put the COW file in a writable directory"})
		}
		if !d.Shared {
			checkLock(r, c, d, opts, backing, false, "")
		}
		return
	}
	if err != nil {
		r.add(&Problem{Check: "cow", Arg: arg, Err: err, Message: fmt.Sprintf("disk %s: %v", d.Key(), err)})
		return
	}
	h, err := cow.ReadHeader(file)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		what := "is empty"
		if st.Size() > 0 {
			what = fmt.Sprintf("is only %d bytes, shorter than a COW header", st.Size())
		}
		r.add(&Problem{Check: "cow-empty", Arg: arg, Err: ErrEmptyCOW,
			Message: fmt.Sprintf("COW file %s %s: the kernel would refuse it (read_cow_header - short header) instead of creating it", file, what),
			Fix:     fmt.Sprintf("remove it (rm %s): the kernel creates a missing COW file", file)})
		return
	case errors.Is(err, cow.ErrNotCOW):
		r.add(&Problem{Check: "cow-not-cow", Arg: arg, Err: ErrNotCOW,
			Message: fmt.Sprintf("%s is given as the COW file over %s but is not a COW file (no COW header)", file, backing),
			Fix:     fmt.Sprintf("give a new COW file name (the kernel creates it), or use %s alone: ubd%d=%s", file, d.Index, d.File)})
		return
	case err != nil:
		r.add(&Problem{Check: "cow", Arg: arg, Err: err, Message: fmt.Sprintf("disk %s: read COW header: %v", d.Key(), err)})
		return
	}
	if !d.Shared {
		checkLock(r, c, d, opts, file, !d.ReadOnly, "")
	}
	checkBacking(r, c, d, opts, file, h, backing)
}

// checkBacking validates a COW file's backing file the way the kernel
// does: the command line's backing file is used when it has the header's
// size and mtime (the kernel then rewrites the header to it); otherwise
// the header's own path must still have them.
func checkBacking(r *Report, c *cmdline.CommandLine, d *cmdline.Disk, opts Options, cowPath string, h *cow.Header, given string) {
	arg := d.String()
	matches := func(st os.FileInfo) bool {
		return uint32(st.ModTime().Unix()) == uint32(h.Mtime) && (!st.Mode().IsRegular() || st.Size() == h.Size)
	}
	backing := h.Backing
	if given != "" {
		if st, err := os.Stat(given); err == nil && matches(st) {
			backing = given
		}
	}
	st, err := os.Stat(backing)
	if err != nil {
		r.add(&Problem{Check: "disk-missing", Arg: arg, Err: ErrMissing,
			Message: fmt.Sprintf("COW file %s names backing file %s, which is not there (%v)", cowPath, h.Backing, errors.Unwrap(err)),
			Fix:     fmt.Sprintf("give the image it was made over: ubd%d=%s,IMAGE (the kernel accepts it if its size and mtime match), or umlkit cow rebase %s IMAGE", d.Index, d.File, cowPath)})
		return
	}
	if !matches(st) {
		kind, what := "mtime", fmt.Sprintf("it was modified at %s, the COW header says %s",
			st.ModTime().UTC().Format(time.RFC3339), time.Unix(h.Mtime, 0).UTC().Format(time.RFC3339))
		if st.Mode().IsRegular() && st.Size() != h.Size {
			kind, what = "size", fmt.Sprintf("its size is now %d bytes, the COW header says %d", st.Size(), h.Size)
		}
		fix := fmt.Sprintf("if only the timestamp changed (touch, cp without -p), accept the new one: umlkit cow rebase %s %s; if the image's content changed, the COW data no longer fits it: start from a new COW file (rm %s)", cowPath, backing, cowPath)
		if kind == "size" {
			fix = fmt.Sprintf("the image itself changed, so the COW data no longer fits it: go back to the image the COW file was made over, or start from a new COW file (rm %s)", cowPath)
		}
		r.add(&Problem{Check: "cow-stale", Arg: arg, Err: ErrBackingChanged,
			Message: fmt.Sprintf("backing file %s of COW file %s changed since the COW file was made (%s): the kernel would refuse the disk (%s mismatch)", backing, cowPath, what, kind),
			Fix:     fix})
		return
	}
	if !d.Shared {
		checkLock(r, c, d, opts, backing, false, cowPath)
	}
}

// checkLock reports a running instance whose lock on path would make the
// kernel's F_SETLK fail. cowPath, when set, is the COW file path is the backing
// file of.
func checkLock(r *Report, c *cmdline.CommandLine, d *cmdline.Disk, opts Options, path string, write bool, cow string) {
	pid, theyWrite, err := probeLock(path, write)
	if err != nil || pid == 0 {
		return
	}
	dirs := append([]string{opts.UMLDir(c)}, opts.UMLDirs...)
	umid := owner(pid, dirs)
	who := fmt.Sprintf("pid %d", pid)
	if umid != "" {
		who = fmt.Sprintf("instance %s (pid %d)", umid, pid)
	}
	p := &Problem{Check: "disk-locked", Arg: d.String(), Err: ErrLocked, PID: pid, Umid: umid}
	switch {
	case theyWrite && (d.COW() || cow != "") && path != opts.abs(d.File):
		p.Message = fmt.Sprintf("%s is in use read-write by %s, so it cannot be the backing file of this instance's COW file: the kernel would stop with \"F_SETLK failed, file already locked by pid %d\"", path, who, pid)
		p.Fix = fmt.Sprintf("stop %s first, then start every instance on this image through its own COW file: %s", who, diskRun(opts, d, path))
	case theyWrite:
		p.Message = fmt.Sprintf("%s is in use by %s: the kernel would stop with \"F_SETLK failed, file already locked by pid %d\"", path, who, pid)
		if d.COW() {
			p.Fix = fmt.Sprintf("give this instance its own COW file: %s ubd%d=NAME.cow,%s ...", opts.run(), d.Index, d.Backing)
		} else {
			p.Fix = fmt.Sprintf("start this one with a COW file over it: %s; the image must not be used read-write meanwhile, so start %s through a COW file too",
				diskRun(opts, d, path), who)
		}
	default:
		p.Message = fmt.Sprintf("%s is the backing file of %s, so this instance cannot open it read-write: the kernel would stop with \"F_SETLK failed, file already locked by pid %d\"", path, who, pid)
		p.Fix = fmt.Sprintf("start this one with its own COW file over it: %s (or add the r flag: ubd%dr=%s)", diskRun(opts, d, path), d.Index, d.File)
	}
	r.add(p)
}
