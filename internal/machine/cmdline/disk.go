package cmdline

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxDisks is how many ubd devices the kernel has (ubd0-ubd15, ubda-ubdp).
const MaxDisks = 16

// DefaultRoot is the file the kernel uses for ubd0 when no ubd0= is given,
// relative to its working directory.
const DefaultRoot = "root_fs"

// Disk is ubdN[rsdct]=FILE[,BACKING][,SERIAL]: a block device /dev/ubdX
// backed by a host file, or by a COW file over a backing file.
type Disk struct {
	Index  int  // 0-15
	Letter bool // written as ubda-ubdp rather than ubd0-ubd15

	ReadOnly bool // r: opened read-only
	Sync     bool // s: O_SYNC
	NoCOW    bool // d: never read FILE as a COW file
	Shared   bool // c: no host file locking
	NoTrim   bool // t: no TRIM/discard

	File    string // the disk file, or the COW file when Backing is set
	Backing string // the backing file under the COW file, or ""
	Serial  string // the disk serial shown in sysfs, or ""

	// Sep is the field separator, ',' or ':' (the kernel takes both);
	// zero means ','.
	Sep byte
}

// Key returns "ubdN" with a decimal N for either spelling.
func (d *Disk) Key() string { return "ubd" + strconv.Itoa(d.Index) }

// Name is the guest's device name, "ubda" for disk 0.
func (d *Disk) Name() string { return "ubd" + string(rune('a'+d.Index)) }

// COW reports whether File is a COW file over Backing.
func (d *Disk) COW() bool { return d.Backing != "" }

func (d *Disk) String() string {
	var b strings.Builder
	b.WriteString("ubd")
	if d.Letter {
		b.WriteByte(byte('a' + d.Index))
	} else {
		b.WriteString(strconv.Itoa(d.Index))
	}
	for _, f := range []struct {
		on bool
		c  byte
	}{{d.ReadOnly, 'r'}, {d.Sync, 's'}, {d.NoCOW, 'd'}, {d.Shared, 'c'}, {d.NoTrim, 't'}} {
		if f.on {
			b.WriteByte(f.c)
		}
	}
	b.WriteByte('=')
	b.WriteString(d.File)
	sep := d.Sep
	if sep == 0 {
		sep = ','
	}
	if d.Backing != "" || d.Serial != "" {
		b.WriteByte(sep)
		b.WriteString(d.Backing)
	}
	if d.Serial != "" {
		b.WriteByte(sep)
		b.WriteString(d.Serial)
	}
	return b.String()
}

// parseDisk parses what follows "ubd".
func parseDisk(s string) (Arg, *bad) {
	d := &Disk{}
	rangeFix := fmt.Sprintf("the kernel has %d disks: ubd0 to ubd%d (or ubda to ubdp)", MaxDisks, MaxDisks-1)
	switch {
	case s != "" && s[0] >= '0' && s[0] <= '9':
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i > 1 && s[0] == '0' {
			return nil, syntax(fmt.Sprintf("disk number %s starts with 0, which the kernel reads as octal", s[:i]), "write it without the leading zeros")
		}
		n, err := strconv.Atoi(s[:i])
		if err != nil || n >= MaxDisks {
			return nil, &bad{fmt.Sprintf("disk number %s is out of range", s[:i]), rangeFix, ErrOutOfRange}
		}
		d.Index, s = n, s[i:]
	case s != "" && s[0] >= 'a' && s[0] <= 'z':
		n := int(s[0] - 'a')
		if n >= MaxDisks {
			return nil, &bad{fmt.Sprintf("disk letter %c is out of range", s[0]), rangeFix, ErrOutOfRange}
		}
		d.Index, d.Letter, s = n, true, s[1:]
	default:
		return nil, syntax("no disk number after ubd", "write ubdN=FILE with N from 0 to 15, such as ubd0=root_fs")
	}
	flags := 0
	for {
		if s == "" {
			return nil, syntax("missing '='", "write ubdN[flags]=FILE, such as ubd0=root_fs")
		}
		c := s[0]
		s = s[1:]
		if c == '=' {
			break
		}
		flags++
		if flags > len("rsdct=") {
			return nil, syntax("too many flags", "give each of r, s, d, c, t at most once")
		}
		switch c {
		case 'r':
			d.ReadOnly = true
		case 's':
			d.Sync = true
		case 'd':
			d.NoCOW = true
		case 'c':
			d.Shared = true
		case 't':
			d.NoTrim = true
		default:
			return nil, syntax(fmt.Sprintf("expected '=' or a flag letter (r, s, d, c or t), found %q", c), "write ubdN[rsdct]=FILE[,BACKING][,SERIAL]")
		}
	}
	var f []string
	for {
		i := strings.IndexAny(s, ",:")
		if i < 0 {
			f = append(f, s)
			break
		}
		if d.Sep == 0 && s[i] == ':' {
			d.Sep = ':'
		} else if d.Sep == 0 {
			d.Sep = ','
		}
		f = append(f, s[:i])
		s = s[i+1:]
	}
	if d.Sep == ',' {
		d.Sep = 0
	}
	if len(f) > 3 {
		return nil, syntax(fmt.Sprintf("%d fields, and the kernel reads only FILE, BACKING and SERIAL and ignores the rest", len(f)),
			"a path with ',' or ':' cannot be given to ubd: rename or link the file")
	}
	f = append(f, "", "")
	d.File, d.Backing, d.Serial = f[0], f[1], f[2]
	if d.Backing == "" && d.Serial == "" {
		d.Sep = 0 // only a separator that is rendered is kept
	}
	switch {
	case d.File == "":
		return nil, syntax("no file", "write ubdN=FILE, or ubdN=COW,BACKING for a copy-on-write disk")
	case d.NoCOW && d.Backing != "":
		return nil, syntax("flag d (not a COW file) and a backing file exclude each other", "drop the d flag to use "+d.File+" as a COW file over "+d.Backing)
	}
	return d, nil
}
