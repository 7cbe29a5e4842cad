package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/image/store"
)

// EnvImage names a root filesystem that every lab image name maps to.
const EnvImage = "UMLKIT_LAB_IMAGE"

var buildMu sync.Mutex

// EnvImageMap overrides or extends the mapping of lab image names to
// umlkit images: "kathara/frr=router,kathara/base=minimal".
const EnvImageMap = "UMLKIT_LAB_IMAGES"

// defaultImageMap maps Kathara's image names to the umlkit images with the
// matching software (umlkit image build debian --preset NAME --name NAME).
var defaultImageMap = map[string]string{
	"":               "minimal",
	"kathara/base":   "minimal",
	"kathara/frr":    "router",
	"kathara/quagga": "router",
	"kathara/bind":   "dns",
	"kathara/sshd":   "minimal",
}

// ImageFor returns the umlkit image a lab image name maps to: the
// mapping in $UMLKIT_LAB_IMAGES, else the default one, else the name
// itself (a lab may name a umlkit image directly).
func ImageFor(name string) string {
	for _, kv := range strings.Split(os.Getenv(EnvImageMap), ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && k == name {
			return v
		}
	}
	if v, ok := defaultImageMap[name]; ok {
		return v
	}
	return name
}

// ResolveImage maps a lab.conf image name (kathara/base, kathara/frr, ""
// for the default) to a root filesystem: $UMLKIT_LAB_IMAGE if set; else
// the umlkit image it maps to (ImageFor) from the image store; for
// "minimal" when the store has none, a minimal busybox image in the data
// directory, built on first use with umlkit (a static binary) as its
// init. Any other image that is not built is an error saying how to build
// it.
func ResolveImage(ctx context.Context, name, umlkit string) (string, error) {
	if p := os.Getenv(EnvImage); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("image %q: %s=%s: %w", name, EnvImage, p, err)
		}
		return p, nil
	}
	want := ImageFor(name)
	if p, err := store.Resolve(want); err == nil {
		return p, nil
	}
	if want != "minimal" {
		preset := want
		return "", fmt.Errorf("image %q maps to the umlkit image %q, which is not built: umlkit image build debian --preset %s --name %s (or map it to another image with %s=%s=NAME)",
			name, want, preset, want, EnvImageMap, name)
	}
	p := filepath.Join(hostdirs.Data(), "images", "lab-minimal.img")
	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	if err := image.BuildMinimal(ctx, p, image.MinimalOptions{Umlkit: umlkit}); err != nil {
		return "", fmt.Errorf("image %q: build the minimal lab image: %w (or point %s at a root filesystem whose init is umlkit)", name, err, EnvImage)
	}
	return p, nil
}
