package cli

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/cow"
)

func newCowCmd(stdio IO) *cobra.Command {
	c := &cobra.Command{
		Use:   "cow",
		Short: "Create, inspect, merge and rebase copy-on-write disk files",
		Long: `A COW file holds an instance's changes to a shared, read-only image (its
backing file), which must not change afterwards: the kernel checks its size
and modification time. These commands are byte-compatible with the kernel,
uml_mkcow and uml_moo, and never touch a file a running instance has open.`,
		GroupID: groupDisks,
	}
	c.AddCommand(newCowCreateCmd(stdio), newCowInfoCmd(stdio), newCowCheckCmd(stdio),
		newCowMergeCmd(stdio), newCowRebaseCmd(stdio))
	return c
}

func newCowCreateCmd(stdio IO) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "create COW BACKING",
		Short: "Create a COW file over a backing file, as the kernel does",
		Long: `Create a sparse COW file (header v3) that records BACKING's absolute
path, size and modification time. An existing COW is kept unless --force,
which replaces it with an empty one (unlike uml_mkcow -f, nothing of the old
file survives).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cowCreate(stdio, args[0], args[1], force)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing COW file with an empty one")
	return cmd
}

func cowCreate(stdio IO, cowPath, backing string, force bool) error {
	h, err := cow.Create(cowPath, backing, cow.CreateOptions{Force: force})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdio.Out, "created %s over %s (%s, data at offset %d)\n", cowPath, h.Backing, humanBytes(h.Size), h.DataOffset())
	return nil
}

func newCowInfoCmd(stdio IO) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info COW",
		Short: "Show a COW file's header, its backing file and how much it holds",
		Long: `Show the header fields and geometry, whether the backing file still has
the recorded size and mtime (and the command that fixes it when not), the
sectors and bytes changed, the disk blocks the file really uses, and the
instance that has it open, if any. The exit status is 1 when the backing
file does not match.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cowInfo(stdio, args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func cowInfo(stdio IO, path string, asJSON bool) error {
	in, err := cow.Stat(path)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdio.Out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(in); err != nil {
			return err
		}
	} else {
		w := stdio.Out
		ver := fmt.Sprint(in.Version)
		if in.Broken64 {
			ver += " (broken 64-bit layout)"
		}
		fmt.Fprintf(w, "cow file:        %s\n", in.Path)
		fmt.Fprintf(w, "version:         %s\n", ver)
		fmt.Fprintf(w, "backing file:    %s\n", in.Backing)
		fmt.Fprintf(w, "backing size:    %d (%s)%s\n", in.HeaderSize, humanBytes(in.HeaderSize), matchNote(in.BackingExists, in.SizeMatches, fmt.Sprint(in.BackingSize)))
		fmt.Fprintf(w, "backing mtime:   %d (%s)%s\n", in.HeaderMtime, time.Unix(in.HeaderMtime, 0).UTC().Format(time.RFC3339),
			matchNote(in.BackingExists, in.MtimeMatches, fmt.Sprintf("%d (%s)", in.BackingMtime, time.Unix(in.BackingMtime, 0).UTC().Format(time.RFC3339))))
		fmt.Fprintf(w, "sector size:     %d\n", in.SectorSize)
		fmt.Fprintf(w, "alignment:       %d\n", in.Alignment)
		fmt.Fprintf(w, "bitmap:          %d bytes at offset %d\n", in.BitmapLen, in.BitmapOffset)
		fmt.Fprintf(w, "data offset:     %d\n", in.DataOffset)
		fmt.Fprintf(w, "disk size:       %d (%s)\n", in.DiskSize, humanBytes(in.DiskSize))
		fmt.Fprintf(w, "changed:         %d sectors, %d bytes (%s)\n", in.ChangedSectors, in.ChangedBytes, humanBytes(in.ChangedBytes))
		fmt.Fprintf(w, "file:            %d bytes, %s of disk blocks used\n", in.FileSize, humanBytes(in.DiskUsage))
		if in.InUsePID != 0 {
			who := fmt.Sprintf("pid %d", in.InUsePID)
			if in.InUseBy != "" {
				who = fmt.Sprintf("instance %s (pid %d)", in.InUseBy, in.InUsePID)
			}
			fmt.Fprintf(w, "in use by:       %s\n", who)
		}
		if in.BackingError != "" {
			fmt.Fprintf(w, "problem:         %s\n", in.BackingError)
		}
	}
	if in.BackingError != "" {
		return &ExitError{Code: 1}
	}
	return nil
}

func matchNote(exists, ok bool, actual string) string {
	switch {
	case !exists:
		return "  (backing file missing)"
	case ok:
		return "  (matches)"
	default:
		return "  MISMATCH: the file has " + actual
	}
}

func newCowCheckCmd(stdio IO) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check COW",
		Short: "Look for structural problems in a COW file, with their offsets",
		Long: `Check the header, the bitmap and the data area against the file's size,
and the backing file against the header. Each problem names the byte offset
in the COW file. The exit status is 1 when a problem would make the kernel
refuse the file or read wrong data.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cowCheck(stdio, args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func cowCheck(stdio IO, path string, asJSON bool) error {
	ps, err := cow.Check(path)
	if err != nil {
		return err
	}
	fatal := false
	for _, p := range ps {
		fatal = fatal || p.Fatal
	}
	if asJSON {
		if ps == nil {
			ps = []cow.Problem{}
		}
		enc := json.NewEncoder(stdio.Out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			Path     string        `json:"path"`
			OK       bool          `json:"ok"`
			Problems []cow.Problem `json:"problems"`
		}{path, !fatal, ps}); err != nil {
			return err
		}
	} else {
		for _, p := range ps {
			kind := "warning"
			if p.Fatal {
				kind = "error"
			}
			if p.Offset >= 0 {
				fmt.Fprintf(stdio.Out, "%s: %s at offset %d: %s\n", path, kind, p.Offset, p.Message)
			} else {
				fmt.Fprintf(stdio.Out, "%s: %s: %s\n", path, kind, p.Message)
			}
		}
		if len(ps) == 0 {
			fmt.Fprintf(stdio.Out, "%s: ok\n", path)
		}
	}
	if fatal {
		return &ExitError{Code: 1}
	}
	return nil
}

func newCowMergeCmd(stdio IO) *cobra.Command {
	var opts mergeOpts
	cmd := &cobra.Command{
		Use:   "merge COW OUT | merge --into-backing COW",
		Short: "Write the disk a COW file shows into a new image, or into its backing file",
		Long: `merge COW OUT writes the virtual disk (the backing file with the COW's
sectors over it) into a new sparse image OUT: zero blocks stay holes. It
writes a temporary file beside OUT and renames it at the end, so an
interrupted merge leaves OUT as it was.

merge --into-backing COW writes the COW's sectors into its backing file.
Every other COW file over that backing file goes stale (the kernel will
refuse it), so this refuses while such files exist in the directories given
with --dir (default: the COW file's own), unless --force. Afterwards the COW
file is empty and valid over the updated backing file. An interrupted merge
is completed by running the same command again.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if opts.intoBacking {
				return cobra.ExactArgs(1)(cmd, args)
			}
			return cobra.ExactArgs(2)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return cowMerge(cmd.Context(), stdio, args, opts)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.intoBacking, "into-backing", false, "merge into the backing file (destructive for other COW files over it)")
	f.StringArrayVar(&opts.dirs, "dir", nil, "with --into-backing: look for other COW files over the same backing file in `DIR` (repeatable)")
	f.BoolVar(&opts.force, "force", false, "with --into-backing: merge even though other COW files over the backing file will go stale")
	f.BoolVar(&opts.noSync, "no-sync", false, "do not fsync OUT before renaming it (faster; a crash may leave a partial image)")
	return cmd
}

type mergeOpts struct {
	intoBacking, force, noSync bool
	dirs                       []string
}

func cowMerge(ctx context.Context, stdio IO, args []string, opts mergeOpts) error {
	cowPath := args[0]
	if !opts.intoBacking {
		d, err := cow.Open(cowPath, cow.OpenOptions{})
		if err != nil {
			return err
		}
		defer d.Close()
		p := newProgress(stdio.Err, "merging "+cowPath)
		err = cow.Merge(ctx, d, args[1], cow.MergeOptions{Progress: p.update, NoSync: opts.noSync})
		p.done()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdio.Out, "merged %s and %s into %s (%d sectors from the COW file)\n", cowPath, d.BackingPath(), args[1], d.ChangedSectors())
		return nil
	}
	h, err := cow.ReadHeader(cowPath)
	if err != nil {
		return err
	}
	dirs := opts.dirs
	if len(dirs) == 0 {
		dirs = []string{filepath.Dir(cowPath)}
	}
	others, err := cow.FindCOWs(h.Backing, dirs, cowPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(others) > 0 && !opts.force {
		return fmt.Errorf("merging %s into %s would make these COW files over the same backing file stale (the kernel refuses them afterwards):\n  %s\nmerge or remove them first, or pass --force",
			cowPath, h.Backing, strings.Join(others, "\n  "))
	}
	p := newProgress(stdio.Err, "merging "+cowPath+" into "+h.Backing)
	err = cow.MergeIntoBacking(ctx, cowPath, cow.IntoBackingOptions{Progress: p.update})
	p.done()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdio.Out, "merged %s into %s; %s is now empty\n", cowPath, h.Backing, cowPath)
	for _, o := range others {
		fmt.Fprintf(stdio.Err, "warning: %s is now stale\n", o)
	}
	return nil
}

func newCowRebaseCmd(stdio IO) *cobra.Command {
	var opts cow.RebaseOptions
	cmd := &cobra.Command{
		Use:   "rebase COW [NEW-BACKING]",
		Short: "Point a COW file at a moved or different backing file, keeping its disk",
		Long: `rebase COW NEW-BACKING, when NEW-BACKING has the recorded size and mtime
(the backing file was moved, or copied with cp -p), only changes the path.
When NEW-BACKING differs, it is a safe rebase: every sector the COW file does
not hold and whose content differs between the old and the new backing file
is first copied from the old one into the COW file, so the disk stays the
same. The old backing file (the header's, or --old-backing) must then still
match the header.

rebase --refresh-mtime COW [NEW-BACKING] records the backing file's current
mtime without comparing any content.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 {
				opts.NewBacking = args[1]
			} else if !opts.RefreshMtime {
				return fmt.Errorf("rebase %s: give the new backing file, or --refresh-mtime to accept the current one's time", args[0])
			}
			return cowRebase(cmd.Context(), stdio, args[0], opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.OldBacking, "old-backing", "", "where the current backing file is now, if it is not at the header's path (for a safe rebase)")
	f.BoolVar(&opts.RefreshMtime, "refresh-mtime", false,
		"record the backing file's current mtime without checking its content. RISK: if the content did change "+
			"(an rw boot, an in-place merge, an edit), the guest sees a mix of old and new sectors and its file system may be corrupted; "+
			"use it only when you know just the time changed (touch, a copy without -p)")
	return cmd
}

func cowRebase(ctx context.Context, stdio IO, cowPath string, opts cow.RebaseOptions) error {
	p := newProgress(stdio.Err, "comparing backing files")
	opts.Progress = p.update
	res, err := cow.Rebase(ctx, cowPath, opts)
	p.done()
	if err != nil {
		return err
	}
	switch {
	case res.Compared:
		fmt.Fprintf(stdio.Out, "rebased %s onto %s; copied %d sectors that differ from the old backing file\n", cowPath, res.Backing, res.Copied)
	case res.RefreshMtime:
		fmt.Fprintf(stdio.Out, "%s now records the current mtime of %s\n", cowPath, res.Backing)
	default:
		fmt.Fprintf(stdio.Out, "%s now points at %s\n", cowPath, res.Backing)
	}
	return nil
}

// progress shows a percentage on a terminal, at most a few times a second.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	last  time.Time
	shown bool
}

func newProgress(w io.Writer, label string) *progress {
	f, ok := w.(*os.File)
	if !ok {
		return &progress{}
	}
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return &progress{}
	}
	return &progress{w: w, label: label}
}

func (p *progress) update(done, total int64) {
	if p.w == nil || total == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); now.Sub(p.last) >= 200*time.Millisecond || done == total {
		p.last = now
		p.shown = true
		fmt.Fprintf(p.w, "\r%s: %3d%% (%s of %s)", p.label, done*100/total, humanBytes(done), humanBytes(total))
	}
}

func (p *progress) done() {
	if p.w != nil && p.shown {
		fmt.Fprintln(p.w)
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// The classic tools.

func umlMkcowTool() Tool {
	return Tool{Name: "uml_mkcow", Summary: "create a COW file (uml-utilities compatible)", Run: runUmlMkcow}
}

func umlMooTool() Tool {
	return Tool{Name: "uml_moo", Summary: "merge a COW file into a new image or its backing file (uml-utilities compatible)", Run: runUmlMoo}
}

// perror formats err like C's perror: "what: Strerror".
func perror(w io.Writer, what string, err error) {
	var errno syscall.Errno
	msg := err.Error()
	if errors.As(err, &errno) {
		msg = errno.Error()
		if msg != "" {
			msg = strings.ToUpper(msg[:1]) + msg[1:]
		}
	}
	fmt.Fprintf(w, "%s: %s\n", what, msg)
}

func runUmlMkcow(ctx context.Context, args []string, stdio IO) int {
	usage := func() int {
		fmt.Fprint(stdio.Err, "uml_mkcow usage: \n\tuml_mkcow [-f] <COW file> <backing file>\n\t-f forces overwrite of an existing COW file\n")
		return 2
	}
	if len(args) < 1 {
		return usage()
	}
	force := false
	if args[0] == "-f" {
		force, args = true, args[1:]
	}
	if len(args) < 2 {
		return usage()
	}
	cowPath, backing := args[0], args[1]
	if !force {
		if _, err := os.Lstat(cowPath); err == nil {
			perror(stdio.Err, "open COW file", syscall.EEXIST)
			return 1
		}
	}
	_, err := cow.Create(cowPath, backing, cow.CreateOptions{Force: force})
	switch {
	case err == nil:
		return 0
	case errors.Is(err, fs.ErrExist):
		perror(stdio.Err, "open COW file", syscall.EEXIST)
	case errors.Is(err, fs.ErrNotExist):
		abs, aerr := cow.Absolutize(backing)
		if aerr != nil {
			fmt.Fprintf(stdio.Out, "absolutize : Can't cd to '%s' - errno = %d\n", filepath.Dir(backing), syscall.ENOENT)
		} else {
			// uml_mkcow's own words for a missing backing file.
			fmt.Fprintf(stdio.Out, "write_cow_header - backing file '%s' mtime request failed, err = 1\n", abs)
		}
		perror(stdio.Err, "write_cow_header", syscall.EPERM)
	default:
		fmt.Fprintf(stdio.Err, "write_cow_header: %v\n", err)
	}
	return 1
}

const mooUsage = `uml_moo usage:
	uml_moo [ -b <actual backing file> ] <COW file> <new backing file>
	uml_moo [ -b <actual backing file> ] -d <COW file>
Creates a new filesystem image from the COW file and its backing file.
Specifying -d will cause a destructive, in-place merge of the COW file into
its current backing file
Specifying -b overrides the backing_file specified in the COW file.  This is
needed when dealing with a COW file that was created inside a chroot jail.
uml_moo supports version 1,2 and 3 COW files.
`

func runUmlMoo(ctx context.Context, args []string, stdio IO) int {
	usage := func() int {
		fmt.Fprint(stdio.Err, mooUsage)
		return 1
	}
	if len(args) == 0 {
		return usage()
	}
	inPlace := false
	if args[0] == "-d" {
		inPlace, args = true, args[1:]
	}
	backing := ""
	if len(args) > 0 && args[0] == "-b" {
		if len(args) < 2 {
			return usage()
		}
		backing, args = args[1], args[2:]
	}
	if (inPlace && len(args) != 1) || (!inPlace && len(args) != 2) {
		return usage()
	}
	cowPath := args[0]
	f, err := os.Open(cowPath)
	if err != nil {
		perror(stdio.Err, "COW file open", err)
		return 1
	}
	f.Close()
	h, err := cow.ReadHeader(cowPath)
	if err != nil {
		// The kernel's COW code prints its complaints on stdout.
		if msg := mooHeaderMessage(cowPath); msg != "" {
			fmt.Fprintln(stdio.Out, msg)
		}
		fmt.Fprintln(stdio.Err, "Reading COW header failed")
		return 1
	}
	if h.Broken64 {
		fmt.Fprintln(stdio.Out, "read_cow_header - broken V3 file with 64-bit layout - recovering content.")
	}
	if backing == "" {
		backing = h.Backing
	}
	if err := cow.CheckBacking(cowPath, h, backing); err != nil {
		var be *cow.BackingError
		switch {
		case errors.As(err, &be) && be.HeaderSize != be.ActualSize:
			fmt.Fprintf(stdio.Err, "Size mismatch (%d vs %d) of COW header vs backing file \"%s\"\n", be.HeaderSize, be.ActualSize, backing)
		case errors.As(err, &be):
			fmt.Fprintf(stdio.Err, "mtime mismatch (%d vs %d) of COW header vs backing file \"%s\"\n", be.HeaderMtime, be.ActualMtime, backing)
		default:
			perror(stdio.Err, "Stating backing file", err)
		}
		return 1
	}
	if inPlace {
		if err := cow.MergeIntoBacking(ctx, cowPath, cow.IntoBackingOptions{Backing: backing, KeepCOW: true}); err != nil {
			fmt.Fprintf(stdio.Err, "uml_moo: %v\n", err)
			return 1
		}
		return 0
	}
	d, err := cow.Open(cowPath, cow.OpenOptions{Backing: backing})
	if err != nil {
		fmt.Fprintf(stdio.Err, "uml_moo: %v\n", err)
		return 1
	}
	defer d.Close()
	if err := cow.Merge(ctx, d, args[1], cow.MergeOptions{Direct: true, NoSync: true, WholeSectors: true}); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Op == "open" {
			perror(stdio.Err, "Output file open", pe.Err)
		} else {
			fmt.Fprintf(stdio.Err, "uml_moo: %v\n", err)
		}
		return 1
	}
	return 0
}

// mooHeaderMessage gives the kernel's words for a header that
// read_cow_header rejects ("" when it says nothing, as for a file without
// the magic). It looks at the file itself rather than at our error text.
func mooHeaderMessage(path string) string {
	b := make([]byte, cow.MaxHeaderSize)
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	n, _ := f.ReadAt(b, 0)
	f.Close()
	b = b[:n]
	if n < 8 {
		return "read_cow_header - short header"
	}
	var version uint32
	switch {
	case binary.BigEndian.Uint32(b) == cow.Magic:
		version = binary.BigEndian.Uint32(b[4:])
	case binary.LittleEndian.Uint32(b) == cow.Magic:
		version = binary.LittleEndian.Uint32(b[4:])
	default:
		return ""
	}
	need := map[uint32]int{1: 280, 2: 4120, 3: 4128}[version]
	switch {
	case need == 0:
		return "read_cow_header - invalid COW version"
	case n < need:
		return fmt.Sprintf("read_cow_header - failed to read V%d header", version)
	case version == 3 && binary.BigEndian.Uint32(b[24:]) == 0:
		return "read_cow_header - invalid COW header, align == 0"
	}
	return ""
}
