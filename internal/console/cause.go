package console

import (
	"strings"
)

// causeMarks are what the kernel's boot messages say when something the
// panic follows from went wrong: a disk that would not open or read, a
// filesystem that would not mount, memory that ran out.
var causeMarks = []string{
	"fail", "error", "errno", "cannot", "can't", "unable", "out of memory",
	"no filesystem could mount root", "ext4-fs", "ext2-fs", "i/o", "ubd",
	"not found", "denied", "invalid",
}

// PanicCause picks from a console log the lines before the kernel's panic
// that say why it panicked (at most max, the nearest last), so that an
// error can show them instead of only the panic's own line. It returns
// nil when there is no panic in log or nothing before it looks like a
// cause.
func PanicCause(log string, max int) []string {
	i := strings.Index(log, PanicMarker)
	if i < 0 {
		return nil
	}
	var cause []string
	for _, line := range strings.Split(log[:i], "\n") {
		line = strings.TrimSpace(strings.TrimRight(line, "\r"))
		low := strings.ToLower(line)
		for _, m := range causeMarks {
			if strings.Contains(low, m) && !strings.HasPrefix(line, "Checking") {
				cause = append(cause, line)
				break
			}
		}
	}
	if len(cause) > max {
		cause = cause[len(cause)-max:]
	}
	return cause
}
