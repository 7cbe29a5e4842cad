package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultPath is the PATH of commands the agent runs, unless given one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// WithDefaults returns env with PATH=DefaultPath and HOME=/root added
// where env does not set them: what every command the agent (and the
// guest's init) starts has.
func WithDefaults(env []string) []string {
	out := append([]string(nil), env...)
	for _, d := range []string{"PATH=" + DefaultPath, "HOME=/root"} {
		key := d[:strings.IndexByte(d, '=')+1]
		if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, key) }) {
			out = append(out, d)
		}
	}
	return out
}

// LookPath finds name in the PATH of env (or the default PATH).
func LookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		return name, nil
	}
	path := DefaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: command not found: %w", name, os.ErrNotExist)
}
