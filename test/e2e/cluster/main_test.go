//go:build e2ecluster

package cluster

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// One two-node cluster with proxyd (nftables) for the package: bringing it
// up costs ≈30 s.
var (
	theCluster *Cluster
	// startErr is why the cluster is not there (every test then fails).
	startErr error
)

const repoRoot = "../../.."

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			fmt.Println("e2ecluster: needs root")
			os.Exit(1)
		}
		fmt.Println("e2ecluster: needs root; skipping")
		os.Exit(0)
	}
	code := 1
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		dir := os.Getenv("PROXYD_CLUSTER_IMAGES")
		tars, err := filepath.Glob(filepath.Join(dir, "*.tar"))
		if err != nil || len(tars) == 0 {
			startErr = fmt.Errorf("no image tarballs in PROXYD_CLUSTER_IMAGES=%q (make images e2e-images)", dir)
			code = m.Run()
			return
		}
		// The binaries come from $PROXYD_LAB_BIN (make sets it).
		theCluster, startErr = Start(ctx, Config{Nodes: 2, Images: tars, EchoBin: os.Getenv("PROXYD_LAB_ECHO")})
		if startErr == nil {
			defer func() {
				t0 := time.Now()
				if err := theCluster.Close(); err != nil {
					log.Printf("e2ecluster: close: %v", err)
					code = 1
				}
				log.Printf("e2ecluster: cluster torn down in %.1fs", time.Since(t0).Seconds())
			}()
			ct, _ := ContenderByName("proxyd-nftables")
			t0 := time.Now()
			startErr = theCluster.Deploy(ctx, ct, repoRoot)
			log.Printf("e2ecluster: proxyd Ready on both nodes %.1fs after apply", time.Since(t0).Seconds())
		}
		if startErr != nil {
			log.Printf("e2ecluster: %v", startErr)
		}
		code = m.Run()
	}()
	os.Exit(code)
}

func need(t *testing.T) *Cluster {
	t.Helper()
	if startErr != nil || theCluster == nil {
		t.Fatalf("cluster not up: %v", startErr)
	}
	return theCluster
}
