package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"
)

// Version is set at build time with -ldflags "-X ...app.Version=...".
var Version = "dev"

// Main runs proxyd with args and returns the process exit code: 0 after a
// clean stop, 1 when running failed, 2 for a bad command line.
func Main(args []string) int {
	if len(args) > 0 && args[0] == "explain" {
		return explainMain(args[1:], os.Stdout, os.Stderr)
	}
	o, err := Parse(args)
	if errors.Is(err, ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxyd: %v\n", oneLine(err))
		return 2
	}
	if o.ShowVersion {
		fmt.Println("proxyd", Version)
		return 0
	}
	if o.WriteConfigTo != "" {
		if err := writeConfig(o, o.WriteConfigTo); err != nil {
			fmt.Fprintf(os.Stderr, "proxyd: %v\n", err)
			return 1
		}
		return 0
	}
	if o.InitOnly {
		if err := errors.Join(tuneConntrack(o), prepareNode(o)); err != nil {
			fmt.Fprintf(os.Stderr, "proxyd: --init-only: %v\n", err)
			return 1
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	defer klog.Flush()
	if o.Cleanup {
		if err := CleanupAll(ctx, o, ""); err != nil {
			klog.ErrorS(err, "Cleanup incomplete")
			return 1
		}
		klog.InfoS("Removed every rule proxyd owns")
		return 0
	}
	if err := Run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "proxyd: %v\n", err)
		return 1
	}
	return 0
}

func oneLine(err error) string {
	s := err.Error()
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, ';', ' ')
			continue
		}
		out = append(out, s[i])
	}
	return string(out)
}
