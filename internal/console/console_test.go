package console

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestWaitForAndPanic(t *testing.T) {
	pr, pw := io.Pipe()
	c := New(pr, io.Discard, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go io.WriteString(pw, "booting\nhello world\nKernel panic - not syncing: VFS: Unable to mount root fs\n")
	if line, err := c.WaitFor(ctx, "hello"); err != nil || line != "hello world" {
		t.Fatalf("WaitFor(hello) = %q, %v; want %q", line, err, "hello world")
	}
	_, err := c.WaitFor(ctx, "never")
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Text != "VFS: Unable to mount root fs" {
		t.Fatalf("WaitFor(never) = %v, want PanicError with the message", err)
	}
	pw.Close()
	<-c.Done()
}

func TestWaitForClosed(t *testing.T) {
	c := New(strings.NewReader("a\nb\n"), io.Discard, nil)
	<-c.Done()
	if _, err := c.WaitFor(context.Background(), "zzz"); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitFor after EOF = %v, want ErrClosed", err)
	}
	if got := c.Lines(); len(got) != 2 {
		t.Fatalf("Lines() = %q, want 2 lines", got)
	}
}

func TestWaitForContext(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	c := New(pr, io.Discard, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.WaitFor(ctx, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor = %v, want deadline exceeded", err)
	}
}

func TestPanicCause(t *testing.T) {
	log := "Checking that ptrace can change system call numbers...OK\n" +
		"Linux version 6.1\n" +
		"EXT4-fs (ubda): unable to read superblock\n" +
		"List of all partitions:\n" +
		"No filesystem could mount root, tried:\n" +
		" ext4\n" +
		"Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(98,0)\n" +
		"ubd: after the panic\n"
	got := PanicCause(log, 5)
	want := []string{"EXT4-fs (ubda): unable to read superblock", "No filesystem could mount root, tried:"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("PanicCause = %q, want %q", got, want)
	}
	if got := PanicCause(log, 1); len(got) != 1 || got[0] != want[1] {
		t.Errorf("PanicCause(max 1) = %q, want the nearest line only", got)
	}
	if got := PanicCause("boot\nerror somewhere\n", 5); got != nil {
		t.Errorf("PanicCause(no panic) = %q, want nil", got)
	}
}
