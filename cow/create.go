package cow

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// CreateOptions configures Create.
type CreateOptions struct {
	// Force replaces an existing file with a fresh, empty COW file
	// (unlike uml_mkcow -f, old bitmap bits do not survive). The old file
	// is replaced only once the new one is complete, and never while an
	// instance has it open.
	Force bool
}

// Create makes a new COW file at cowPath over backing, as the kernel does:
// a v3 header with the backing file's absolute path, size and mtime,
// 512-byte sectors and 4096-byte alignment, and a sparse body of
// DataOffset()+Size bytes. An existing cowPath gives an error wrapping
// fs.ErrExist unless opts.Force.
func Create(cowPath, backing string, opts CreateOptions) (*Header, error) {
	abs, err := Absolutize(backing)
	if err != nil {
		return nil, fmt.Errorf("create cow %s: %w", cowPath, err)
	}
	size, mtime, err := backingStat(abs)
	if err != nil {
		return nil, fmt.Errorf("create cow %s: backing file: %w", cowPath, err)
	}
	h := &Header{Version: 3, Backing: abs, Mtime: mtime, Size: size, SectorSize: SectorSize, Alignment: Alignment}
	hdr, err := h.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("create cow %s: %w", cowPath, err)
	}
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("create cow %s: %w", cowPath, err)
	}
	if !opts.Force {
		f, err := os.OpenFile(cowPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			if errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("create cow %s: %w; remove it or pass --force to replace it", cowPath, fs.ErrExist)
			}
			return nil, fmt.Errorf("create cow: %w", err)
		}
		if err := writeNew(f, cowPath, h, hdr); err != nil {
			f.Close()
			os.Remove(cowPath)
			return nil, err
		}
		if err := f.Close(); err != nil {
			os.Remove(cowPath)
			return nil, fmt.Errorf("create cow %s: %w", cowPath, err)
		}
		return h, nil
	}
	// Forced: refuse to replace a file a running instance has open, then
	// build the new file beside it and rename it over.
	if old, err := os.Open(cowPath); err == nil {
		lerr := lockFile(old, cowPath, false)
		defer old.Close()
		if lerr != nil {
			return nil, fmt.Errorf("create cow: %w", lerr)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(cowPath), "."+filepath.Base(cowPath)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create cow: %w", err)
	}
	tmpName := tmp.Name()
	if err := writeNew(tmp, cowPath, h, hdr); err != nil {
		tmp.Close()
		os.Remove(tmpName)
		return nil, err
	}
	if err := tmp.Chmod(0o644); err == nil {
		err = tmp.Close()
	} else {
		tmp.Close()
	}
	if err := os.Rename(tmpName, cowPath); err != nil {
		os.Remove(tmpName)
		return nil, fmt.Errorf("create cow: %w", err)
	}
	return h, nil
}

func writeNew(f *os.File, name string, h *Header, hdr []byte) error {
	if err := lockFile(f, name, true); err != nil {
		return fmt.Errorf("create cow: %w", err)
	}
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return fmt.Errorf("create cow %s: write header: %w", name, err)
	}
	// The bitmap and the data stay holes, as with the kernel.
	if err := f.Truncate(h.DataOffset() + h.Size); err != nil {
		return fmt.Errorf("create cow %s: %w", name, err)
	}
	return nil
}

// Absolutize returns the absolute name the kernel records for a backing
// file: the directory is resolved (symlinks included), the last element is
// kept as given.
func Absolutize(name string) (string, error) {
	abs, err := filepath.Abs(name)
	if err != nil {
		return "", err
	}
	dir, base := filepath.Split(abs)
	rdir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("resolve directory of %s: %w", name, err)
	}
	return filepath.Join(rdir, base), nil
}

// backingStat returns the size and mtime the kernel records for a backing
// file. Block devices report their size by seeking to the end.
func backingStat(path string) (size, mtime int64, err error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	size = st.Size()
	if st.Mode()&fs.ModeDevice != 0 {
		f, err := os.Open(path)
		if err != nil {
			return 0, 0, err
		}
		defer f.Close()
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return 0, 0, err
		}
	} else if !st.Mode().IsRegular() {
		return 0, 0, fmt.Errorf("%s is not a regular file or block device", path)
	}
	return size, st.ModTime().Unix(), nil
}
