package cmdline

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

const sizeUnits = "KMGTPE"

// ParseSize reads a size the way the kernel's memparse does: a number of
// bytes with an optional K, M, G, T, P or E suffix (powers of 1024, either
// case), in decimal or with 0x in hex. It is stricter than memparse, which
// silently ignores what follows the suffix ("64MB" is 64M) and reads a
// leading 0 as octal ("064M" is 52M): both are errors here.
func ParseSize(s string) (uint64, error) {
	num, shift := s, 0
	if n := len(s); n > 0 {
		if i := strings.IndexByte(sizeUnits, upper(s[n-1])); i >= 0 && !isHexSize(s) {
			num, shift = s[:n-1], 10*(i+1)
		}
	}
	base := 10
	if h, ok := strings.CutPrefix(strings.ToLower(num), "0x"); ok {
		num, base = h, 16
	}
	switch {
	case num == "":
		return 0, fmt.Errorf("size %q has no number", s)
	case base == 10 && len(num) > 1 && num[0] == '0' && isDigits(num):
		return 0, fmt.Errorf("size %q starts with 0, which the kernel reads as octal", s)
	}
	n, err := strconv.ParseUint(num, base, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("size %q is too large", s)
		}
		return 0, fmt.Errorf("size %q is not a number with an optional K, M or G suffix", s)
	}
	if shift > 0 && n > 0 && bits.LeadingZeros64(n) < shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}

// isHexSize tells "0x1E" (hex digits only) from "0x1M": a trailing E after
// 0x is a hex digit, as in memparse.
func isHexSize(s string) bool {
	h, ok := strings.CutPrefix(strings.ToLower(s), "0x")
	if !ok || h == "" {
		return false
	}
	c := h[len(h)-1]
	return c >= 'a' && c <= 'f'
}

// FormatSize writes n with the largest suffix that divides it exactly, so
// that ParseSize(FormatSize(n)) == n: 64M, 1G, 1536K, 1000.
func FormatSize(n uint64) string {
	if n == 0 {
		return "0"
	}
	u := -1
	for u+1 < len(sizeUnits) && n%(1<<(10*(u+2))) == 0 {
		u++
	}
	if u < 0 {
		return strconv.FormatUint(n, 10)
	}
	return strconv.FormatUint(n>>(10*(u+1)), 10) + sizeUnits[u:u+1]
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
