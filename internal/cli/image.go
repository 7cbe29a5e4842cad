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

	"github.com/umlkit/umlkit/cow"
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
	c.AddCommand(newImageInstallCmds(stdio)...)
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
		return writeJSON(stdio.Out, ms)
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

Presets:` + presetHelp(),
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
				opts.Packages = append(append([]string(nil), p...), opts.Packages...)
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

func newImageInstallCmds(stdio IO) []*cobra.Command {
	var cowFile string
	install := &cobra.Command{
		Use:   "install IMAGE PKG...",
		Short: "Install Slackware (.tgz, .txz) and Debian (.deb) packages into an image",
		Long: `Install packages into an image as the seed does by hand: boot it under UML with
the package files shared through hostfs (confined to a directory holding only
them), install each inside the guest (Slackware: unpack at /, run
install/doinst.sh, record /var/log/packages/NAME like installpkg; Debian:
dpkg -i where the image has dpkg, else unpack and record in dpkg's
database), and power off. The work happens on a copy that replaces the image
only when every package installed: a bad package leaves it as it was.

An image that COW files depend on must not change (the kernel would refuse
them): install into one instance's COW file with --cow instead.`,
		Example: "  umlkit image install minimal tcpdump-4.99.4-x86_64-1.txz\n  umlkit image install debian ./hello_2.10-3_amd64.deb\n  umlkit image install debian --cow r1.cow tcpdump-4.99.4-x86_64-1.txz",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			exe, err := staticSelf()
			if err != nil {
				return err
			}
			return imageInstall(cmd.Context(), stdio, args[0], args[1:], cowFile, exe)
		},
	}
	install.Flags().StringVar(&cowFile, "cow", "", "install into this COW `FILE` over IMAGE instead of the image")
	var asJSON bool
	packages := &cobra.Command{
		Use:   "packages IMAGE",
		Short: "List the packages installed in an image (/var/log/packages and dpkg's database), without booting it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return imagePackages(stdio, args[0], asJSON)
		},
	}
	packages.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	remove := &cobra.Command{
		Use:   "remove IMAGE NAME",
		Short: "Remove a Slackware package from an image, like removepkg",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			exe, err := staticSelf()
			if err != nil {
				return err
			}
			return imageRemove(cmd.Context(), stdio, args[0], args[1], exe)
		},
	}
	return []*cobra.Command{install, packages, remove}
}

// writableImage resolves an image that is about to change and refuses it
// while COW files or instances depend on it.
func writableImage(nameOrPath, verb string) (string, error) {
	img, err := store.Resolve(nameOrPath)
	if err != nil {
		return "", err
	}
	if err := store.CheckUnused(img); err != nil {
		var iu *store.InUseError
		if errors.As(err, &iu) && len(iu.COWs) > 0 {
			return "", fmt.Errorf("%w: %s would change its modification time and invalidate them; install into one instance's COW file instead: umlkit image install %s --cow %s PKG...", err, verb, nameOrPath, iu.COWs[0])
		}
		return "", err
	}
	return img, nil
}

func imageInstall(ctx context.Context, stdio IO, nameOrPath string, pkgs []string, cowFile, exe string) error {
	opts := image.InstallOptions{Umlkit: exe, Progress: progressTo(stdio.Err)}
	if cowFile == "" {
		img, err := writableImage(nameOrPath, "installing")
		if err != nil {
			return err
		}
		opts.Image = img
	} else {
		img, err := store.Resolve(nameOrPath)
		if err != nil {
			return err
		}
		h, err := cow.ReadHeader(cowFile)
		if err != nil {
			return err
		}
		bst, err1 := os.Stat(h.Backing)
		ist, err2 := os.Stat(img)
		if err1 != nil || err2 != nil || !os.SameFile(bst, ist) {
			return fmt.Errorf("COW file %s is over %s, not over image %s", cowFile, h.Backing, img)
		}
		if e, err := cow.Probe(cowFile, true); err == nil && e != nil {
			return fmt.Errorf("%w: stop the instance first (umlkit vm stop)", e)
		}
		opts.Image, opts.COW = img, cowFile
	}
	done, err := image.Install(ctx, pkgs, opts)
	if err != nil {
		return err
	}
	for _, p := range done {
		v := ""
		if p.Version != "" {
			v = " " + p.Version
		}
		fmt.Fprintf(stdio.Out, "installed %s%s (%s, %s, %d files)\n", p.Name, v, p.Kind, humanBytes(p.UncompressedSize), len(p.Files))
	}
	if cowFile == "" {
		recordPackages(nameOrPath, done)
	}
	return nil
}

// recordPackages adds installed packages to a store image's manifest.
func recordPackages(nameOrPath string, done []*image.Package) {
	s := store.DefaultStore()
	m, err := s.Get(nameOrPath)
	if err != nil {
		return
	}
	for _, p := range done {
		m.Packages = append(m.Packages, p.Name)
	}
	if st, err := os.Stat(m.Path); err == nil {
		m.Size = st.Size()
	}
	s.SaveManifest(m)
}

func imagePackages(stdio IO, nameOrPath string, asJSON bool) error {
	img, err := store.Resolve(nameOrPath)
	if err != nil {
		return err
	}
	list, err := image.ListPackages(img)
	if err != nil {
		return err
	}
	if asJSON {
		if list == nil {
			list = []image.Installed{}
		}
		return writeJSON(stdio.Out, list)
	}
	w := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KIND\tNAME\tVERSION\tSUMMARY")
	for _, p := range list {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", p.Kind, p.Name, p.Version, p.Summary)
	}
	return w.Flush()
}

func imageRemove(ctx context.Context, stdio IO, nameOrPath, pkg, exe string) error {
	img, err := writableImage(nameOrPath, "removing")
	if err != nil {
		return err
	}
	rec, err := image.Remove(ctx, pkg, image.InstallOptions{Image: img, Umlkit: exe, Progress: progressTo(stdio.Err)})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdio.Out, "removed %s from %s\n", rec.Name, nameOrPath)
	return nil
}
