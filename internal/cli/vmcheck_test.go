package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVMCheckProblems(t *testing.T) {
	dir := t.TempDir()
	out, _, code := runArgs(t, nil, "umlkit", "vm", "check", "--json", "--dir", dir, "mem=32M", "eth0=pcap", "uml_dir="+dir)
	var res vmCheckResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("vm check --json = %q: %v", out, err)
	}
	checks := map[string]bool{}
	for _, p := range res.Problems {
		checks[p.Check] = true
		if p.Fix == "" {
			t.Errorf("problem %q has no fix", p.Message)
		}
	}
	if code != 1 || res.OK || !checks["disk-missing"] || !checks["mem-low"] || !checks["syntax"] {
		t.Errorf("vm check = exit %d, %+v; want exit 1 with disk-missing, mem-low and syntax problems", code, res)
	}
}

func TestVMCheckClean(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "root_fs"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code := runArgs(t, nil, "umlkit", "vm", "check", "--dir", dir, "ubd0=root_fs1.cow,root_fs", "mem=64M", "umid=uml1", "uml_dir="+dir)
	if code != 0 || !strings.Contains(out, "no problems found") || !strings.HasPrefix(out, "linux ubd0=root_fs1.cow,root_fs mem=64M umid=uml1") {
		t.Errorf("vm check on the seed's line = %q, exit %d; want no problems", out, code)
	}
	// Warnings alone do not fail the check.
	out, _, code = runArgs(t, nil, "umlkit", "vm", "check", "--dir", dir, "mem=32M", "uml_dir="+dir)
	if code != 0 || !strings.Contains(out, "WARNING") || !strings.Contains(out, "fix: use mem=64M") {
		t.Errorf("vm check mem=32M = %q, exit %d; want a warning and exit 0", out, code)
	}
}
