// Command l7gate is the single l7gate binary: the agent, the proxy and the
// operator's tools. It is the only place where l7gate's packages are
// composed.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf is an error in what the user typed: exit code 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// app holds what every command shares; nothing global.
type app struct {
	stdout, stderr io.Writer
	logLevel       string
	log            *slog.Logger
	// argv is the process's command line when it runs as the l7gate
	// binary (main), so a command can re-execute itself (the proxy does
	// to shed capabilities); nil when run in-process (tests).
	argv []string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runApp(ctx, &app{stdout: os.Stdout, stderr: os.Stderr, argv: os.Args}, os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes the command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runApp(ctx, &app{stdout: stdout, stderr: stderr}, args)
}

func runApp(ctx context.Context, a *app, args []string) int {
	stderr := a.stderr
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "error:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "error:", err)
	return 1
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "l7gate",
		Short: "L7-aware network policy for Kubernetes without sidecars",
		Long: `l7gate enforces CiliumNetworkPolicy (HTTP, gRPC and Kafka rules included),
CiliumClusterwideNetworkPolicy and NetworkPolicy for Kubernetes pods with an
eBPF datapath and a per-node L7 proxy.

Commands that read policy take Kubernetes YAML or JSON files or folders.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
				return usageErrorf("--log-level: %v", err)
			}
			a.log = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: lvl}))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	for _, extra := range a.extraCommands() {
		root.AddCommand(extra)
	}
	return root
}
