package image

import (
	"debug/elf"
	"fmt"
)

// IsStatic reports whether the ELF executable at path is statically
// linked (it has no program interpreter), as a file copied into an image
// without its libraries must be.
func IsStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}
