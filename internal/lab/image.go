package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/image"
)

// EnvImage names a root filesystem that every lab image name maps to.
const EnvImage = "UMLKIT_LAB_IMAGE"

var buildMu sync.Mutex

// ResolveImage maps a lab.conf image name (kathara/base, kathara/frr, ""
// for the default) to a root filesystem: $UMLKIT_LAB_IMAGE if set, else
// the minimal busybox image in the data directory, built on first use with
// umlkit (a static binary) as its init. Every name maps to that image for
// now; this is where the image store will answer instead.
func ResolveImage(ctx context.Context, name, umlkit string) (string, error) {
	if p := os.Getenv(EnvImage); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("image %q: %s=%s: %w", name, EnvImage, p, err)
		}
		return p, nil
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
