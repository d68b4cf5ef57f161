// Command soak runs proxyd (nftables mode) in the e2e lab for a long time
// under churn and checks that it stays correct and does not grow:
//
//	go run ./test/soak -duration 1h -out docs/soak      # make soak
//
// Services and EndpointSlices are created, updated and deleted at about
// -rate writes a second, with endpoints flapping, while a client in the
// lab's client namespace connects to one Service nobody touches every
// -probe-every and counts the connections that fail. proxyd's RSS and
// goroutine count are sampled every -sample into <label>.csv and plotted
// into <label>.svg (and .png when rsvg-convert exists). When the churn
// stops, the nftables tables the kernel holds are compared, with pkg/nft's
// reader and Drift, against the tables rendered from the API's objects:
// every Service, each element and rule. The summary goes to <label>.md.
// It exits non-zero when a connection failed, proxyd exited or the kernel
// differs from the model.
//
// It needs root, the upstream binaries ($PROXYD_LAB_BIN, as `make tools`
// builds them) and bin/proxyd ($PROXYD_BIN).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	if err := run(); err != nil {
		log.Printf("soak: %v", err)
		os.Exit(1)
	}
}

type options struct {
	duration, probeEvery, sample time.Duration
	rate                         float64
	pool, pods                   int
	out, label, proxyd, labBin   string
}

func run() error {
	var o options
	flag.DurationVar(&o.duration, "duration", time.Hour, "how long the churn runs")
	flag.Float64Var(&o.rate, "rate", 20, "API writes a second (Services and EndpointSlices created, updated, deleted)")
	flag.IntVar(&o.pool, "pool", 200, "names of churned Services")
	flag.DurationVar(&o.probeEvery, "probe-every", 50*time.Millisecond, "how often the client connects to the untouched Service")
	flag.DurationVar(&o.sample, "sample", 10*time.Second, "how often RSS and goroutines are sampled")
	flag.IntVar(&o.pods, "pods", 6, "echo Pods in the lab")
	flag.StringVar(&o.out, "out", "docs/soak", "directory for <label>.csv, .svg, .png and .md")
	flag.StringVar(&o.label, "label", "", "file name stem; default soak-<duration>")
	flag.StringVar(&o.proxyd, "proxyd", envOr("PROXYD_BIN", "bin/proxyd"), "proxyd binary")
	flag.StringVar(&o.labBin, "lab-bin", lab.DefaultBinDir(), "directory with etcd and kube-apiserver")
	flag.Parse()
	if o.label == "" {
		o.label = "soak-" + shortDuration(o.duration)
	}
	if o.labBin == "" {
		return errors.New("no upstream binaries: set PROXYD_LAB_BIN or -lab-bin (make tools builds them)")
	}
	var err error
	if o.proxyd, err = filepath.Abs(o.proxyd); err != nil {
		return err
	}
	if _, err := os.Stat(o.proxyd); err != nil {
		return fmt.Errorf("proxyd binary: %w", err)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	l, err := lab.Start(sctx, lab.Config{Logf: log.Printf, BinDir: o.labBin, Pods: o.pods})
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		if err := l.Close(); err != nil {
			log.Printf("lab close: %v", err)
		}
	}()
	res, err := soak(ctx, l, o)
	if res != nil {
		if werr := res.write(o); werr != nil {
			err = errors.Join(err, werr)
		}
		fmt.Print(res.summary(o))
	}
	if err != nil {
		return err
	}
	return res.verdict()
}

// shortDuration is 1h, 3m or 90s rather than 1h0m0s.
func shortDuration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
