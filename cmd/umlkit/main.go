// Command umlkit runs virtual network labs on User-Mode Linux.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/umlkit/umlkit/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args, cli.IO{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
	stop()
	os.Exit(code)
}
