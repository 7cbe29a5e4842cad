package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// StopGrace is how long a cancelled kernel gets between SIGTERM and SIGKILL.
const StopGrace = 5 * time.Second

// Command returns the host command that runs the kernel with args.
//
// The process gets its own process group (UML starts helper and guest
// processes of its own). Cancelling ctx sends SIGTERM to the kernel's main
// process, which makes UML clean up and exit; after StopGrace it is killed.
// Call KillGroup after Wait to be sure no helper process is left.
//
// On x86-64 the xstate shim is preloaded (see xstate/shim.c).
func (k *Kernel) Command(ctx context.Context, args ...string) (*exec.Cmd, error) {
	cmd := exec.CommandContext(ctx, k.Path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = StopGrace
	env := os.Environ()
	if ShimNeeded() {
		shim, err := InstallShim(LibDir())
		if err != nil {
			return nil, err
		}
		env = withPreload(env, shim)
	}
	cmd.Env = env
	return cmd, nil
}

func withPreload(env []string, lib string) []string {
	out := make([]string, 0, len(env)+1)
	pre := lib
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "LD_PRELOAD="); ok {
			if v != "" {
				pre = lib + ":" + v
			}
			continue
		}
		out = append(out, kv)
	}
	return append(out, "LD_PRELOAD="+pre)
}

// KillGroup sends SIGKILL to the process group led by cmd's process. It is
// safe to call after the process exited; a group already gone is not an
// error.
func KillGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process group %d: %w", cmd.Process.Pid, err)
	}
	return nil
}
