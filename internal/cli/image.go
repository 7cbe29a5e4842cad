package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/image/store"
)

func newImageCmd(stdio IO) *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Build, list and adapt root filesystem images",
		Long: `Images live in a store under the data dir ($UMLKIT_DATA_DIR/images), each a
sparse ext4 file with a small JSON manifest; vm and lab commands take an
image's name where they take a path (--image debian). umlkit's images run
umlkit as their init, with the exec agent (umlkit vm exec).`,
		GroupID: groupDisks,
	}
	c.AddCommand(newImageListCmd(stdio), newImagePathCmd(stdio), newImageRmCmd(stdio), newImageBuildCmd(stdio))
	return c
}

func newImageListCmd(stdio IO) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the images in the store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return imageList(stdio, store.DefaultStore(), asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func imageList(stdio IO, s *store.Store, asJSON bool) error {
	ms, err := s.List()
	if err != nil {
		return err
	}
	if asJSON {
		if ms == nil {
			ms = []store.Manifest{}
		}
		return writeJSON(stdio, ms)
	}
	if len(ms) == 0 {
		fmt.Fprintf(stdio.Out, "no images in %s: umlkit image build minimal makes one\n", s.Dir)
		return nil
	}
	w := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tKIND\tSIZE\tCREATED\tPACKAGES")
	for _, m := range ms {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", m.Name, m.Kind, humanBytes(m.Size), m.Created.Local().Format("2006-01-02 15:04"), strings.Join(m.Packages, " "))
	}
	return w.Flush()
}

func newImagePathCmd(stdio IO) *cobra.Command {
	return &cobra.Command{
		Use:   "path NAME",
		Short: "Print an image's file (for scripts)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := store.DefaultStore().Get(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(stdio.Out, m.Path)
			return nil
		},
	}
}

func newImageRmCmd(stdio IO) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images (refused while COW files or running instances use them)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := store.DefaultStore()
			for _, n := range args {
				if err := s.Remove(n); err != nil {
					var iu *store.InUseError
					if errors.As(err, &iu) {
						return fmt.Errorf("%w: remove or merge those first (umlkit cow merge), or stop the instances", err)
					}
					return err
				}
				fmt.Fprintf(stdio.Out, "removed image %s\n", n)
			}
			return nil
		},
	}
}

func newImageBuildCmd(stdio IO) *cobra.Command {
	c := &cobra.Command{
		Use:   "build",
		Short: "Build an image: minimal (busybox, seconds, no network) or debian (debootstrap)",
	}
	c.AddCommand(newImageBuildMinimalCmd(stdio), newImageBuildDebianCmd(stdio))
	return c
}

type buildFlags struct {
	name  string
	force bool
}

func (f *buildFlags) add(cmd *cobra.Command, def string) {
	cmd.Flags().StringVar(&f.name, "name", def, "image `NAME` in the store")
	cmd.Flags().BoolVar(&f.force, "force", false, "replace an existing image of that name (refused while COW files use it)")
}

// prepare checks the name and whether it may be (re)built, and returns
// the store and the image's path.
func (f *buildFlags) prepare() (*store.Store, string, error) {
	if err := store.CheckName(f.name); err != nil {
		return nil, "", err
	}
	s := store.DefaultStore()
	if m, err := s.Get(f.name); err == nil {
		if !f.force {
			return nil, "", fmt.Errorf("image %s exists (%s): pick another --name, or rebuild it with --force", f.name, m.Path)
		}
		if err := store.CheckUnused(m.Path); err != nil {
			return nil, "", fmt.Errorf("%w: rebuilding it would invalidate them", err)
		}
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, "", err
	}
	return s, s.Path(f.name), nil
}

// staticSelf returns this umlkit's binary if it is statically linked, as
// the guest side in an image must be.
func staticSelf() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	ok, err := image.IsStatic(exe)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("%s is dynamically linked, but images need a static umlkit as their init: build it with make build (CGO_ENABLED=0) and run bin/umlkit", exe)
	}
	return exe, nil
}

// progressTo returns w when it is a terminal (progress is for people),
// else io.Discard.
func progressTo(w io.Writer) io.Writer {
	if f, ok := w.(interface{ Fd() uintptr }); ok && term.IsTerminal(int(f.Fd())) {
		return w
	}
	return io.Discard
}

func newImageBuildMinimalCmd(stdio IO) *cobra.Command {
	var f buildFlags
	cmd := &cobra.Command{
		Use:   "minimal",
		Short: "Build the minimal image: busybox and umlkit as init (seconds, no network)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			exe, err := staticSelf()
			if err != nil {
				return err
			}
			return imageBuildMinimal(cmd.Context(), stdio, f, exe)
		},
	}
	f.add(cmd, "minimal")
	return cmd
}

func imageBuildMinimal(ctx context.Context, stdio IO, f buildFlags, exe string) error {
	s, out, err := f.prepare()
	if err != nil {
		return err
	}
	progress := progressTo(stdio.Err)
	start := time.Now()
	fmt.Fprintf(progress, "building minimal image %s (busybox %s, umlkit %s)\n", f.name, image.BusyboxPath, exe)
	if err := image.BuildMinimal(ctx, out, image.MinimalOptions{Umlkit: exe}); err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	m := &store.Manifest{Name: f.name, Kind: store.KindMinimal, Size: st.Size(), Created: time.Now().UTC(), Packages: []string{"busybox", "umlkit"}}
	if err := s.SaveManifest(m); err != nil {
		return err
	}
	fmt.Fprintf(stdio.Out, "built image %s: %s (%s) in %v\n", f.name, out, humanBytes(st.Size()), time.Since(start).Round(10*time.Millisecond))
	return nil
}

func newImageBuildDebianCmd(stdio IO) *cobra.Command {
	var f buildFlags
	var opts image.DebianOptions
	var preset string
	cmd := &cobra.Command{
		Use:   "debian",
		Short: "Build a Debian image with debootstrap (minbase), extra packages and umlkit as init",
		Long: `Build a Debian image with debootstrap --variant=minbase, the packages of
--packages and --preset, and umlkit as /sbin/init (the exec agent included).
The mirror is --mirror, else the host's apt sources, else debootstrap's
default. Needs root and network access to the mirror; takes a minute or more.

Presets: ` + presetHelp(),
		Example: "  umlkit image build debian --preset router --name router\n  umlkit image build debian --suite bookworm --packages tcpdump,curl",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			exe, err := staticSelf()
			if err != nil {
				return err
			}
			if preset != "" {
				p, ok := image.Presets[preset]
				if !ok {
					return fmt.Errorf("--preset %q: no such preset; there are: %s", preset, strings.Join(image.PresetNames(), ", "))
				}
				opts.Packages = append(p, opts.Packages...)
			}
			opts.Umlkit = exe
			return imageBuildDebian(cmd.Context(), stdio, f, opts)
		},
	}
	f.add(cmd, "debian")
	cmd.Flags().StringVar(&opts.Suite, "suite", image.DefaultSuite, "Debian `SUITE`")
	cmd.Flags().StringVar(&opts.Mirror, "mirror", "", "archive `URL` (default: the host's apt sources, else debootstrap's)")
	cmd.Flags().StringSliceVar(&opts.Packages, "packages", nil, "extra packages `a,b,...`")
	cmd.Flags().StringVar(&preset, "preset", "", "a named package set: "+strings.Join(image.PresetNames(), ", "))
	return cmd
}

func presetHelp() string {
	var b strings.Builder
	for _, n := range image.PresetNames() {
		fmt.Fprintf(&b, "\n  %-8s %s", n, strings.Join(image.Presets[n], " "))
	}
	return b.String()
}

func imageBuildDebian(ctx context.Context, stdio IO, f buildFlags, opts image.DebianOptions) error {
	s, out, err := f.prepare()
	if err != nil {
		return err
	}
	if opts.Progress == nil {
		opts.Progress = progressTo(stdio.Err)
	}
	start := time.Now()
	mirror, err := image.BuildDebian(ctx, out, opts)
	if err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	suite := opts.Suite
	if suite == "" {
		suite = image.DefaultSuite
	}
	m := &store.Manifest{Name: f.name, Kind: store.KindDebian, Size: st.Size(), Created: time.Now().UTC(), Suite: suite, Mirror: mirror,
		Packages: append([]string{"minbase", "umlkit"}, opts.Packages...)}
	if err := s.SaveManifest(m); err != nil {
		return err
	}
	fmt.Fprintf(stdio.Out, "built image %s: %s (%s, Debian %s) in %v\n", f.name, out, humanBytes(st.Size()), suite, time.Since(start).Round(time.Second))
	return nil
}
