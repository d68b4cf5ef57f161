//go:build e2enode

package node

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/testenv"
	"github.com/proxyd/proxyd/test/e2e/lab"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// One lab and one node for the whole package: bringing them up costs ≈15 s.
var (
	theLab  *lab.Lab
	theNode *Node
	// startErr is why the node is not there (every test then fails with it).
	startErr error
	// proxydReadyAfter is how long the DaemonSet pod took to become Ready.
	proxydReadyAfter time.Duration
)

const repoRoot = "../../.."

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		if testenv.InCI() {
			fmt.Println("e2enode: needs root, and CI is set: failing rather than skipping")
			os.Exit(1)
		}
		fmt.Println("e2enode: needs root; skipping")
		os.Exit(0)
	}
	bin := os.Getenv("PROXYD_LAB_BIN")
	if bin == "" {
		if b, err := os.ReadFile(filepath.Join(os.Getenv("HOME"), ".cache/proxyd/.bin-path")); err == nil {
			bin = strings.TrimSpace(string(b))
		}
	}
	code := 1
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		begin := time.Now()
		if err := Sweep(log.Printf); err != nil {
			log.Printf("e2enode: sweep: %v", err)
		}
		theLab, startErr = lab.Start(ctx, lab.Config{BinDir: bin, Pods: 1, EchoBin: os.Getenv("PROXYD_LAB_ECHO")})
		if startErr != nil {
			log.Printf("e2enode: lab: %v", startErr)
			return
		}
		defer func() {
			if err := theLab.Close(); err != nil {
				log.Printf("e2enode: lab close: %v", err)
				code = 1
			}
		}()
		log.Printf("e2enode: lab up in %.1fs", time.Since(begin).Seconds())
		theNode, startErr = Start(ctx, theLab, Config{
			RepoRoot: repoRoot, ImagesDir: os.Getenv("PROXYD_NODE_IMAGES"), ProxydBin: os.Getenv("PROXYD_BIN"),
		})
		if startErr == nil {
			defer func() {
				t0 := time.Now()
				if err := theNode.Close(); err != nil {
					log.Printf("e2enode: node close: %v", err)
					code = 1
				}
				log.Printf("e2enode: node torn down in %.1fs", time.Since(t0).Seconds())
			}()
			startErr = deployProxyd(ctx)
		}
		if startErr != nil {
			log.Printf("e2enode: %v", startErr)
		}
		code = m.Run()
		if hold := os.Getenv("PROXYD_NODE_HOLD"); hold != "" {
			// Debugging: keep everything up while the file exists.
			log.Printf("e2enode: holding the node while %s exists (lab %s, dir %s)", hold, theLab.ID, theLab.Dir)
			for {
				if _, err := os.Stat(hold); err != nil {
					break
				}
				time.Sleep(time.Second)
			}
		}
	}()
	os.Exit(code)
}

func deployProxyd(ctx context.Context) error {
	t0 := time.Now()
	if err := theNode.ApplyProxyd(ctx, filepath.Join(repoRoot, "deploy", "daemonset.yaml"), ""); err != nil {
		return err
	}
	if _, err := theNode.WaitPodsReady(ctx, "kube-system", "app.kubernetes.io/name=proxyd", 1, 90*time.Second); err != nil {
		return fmt.Errorf("%w\n%s", err, proxydLogs(ctx))
	}
	proxydReadyAfter = time.Since(t0)
	log.Printf("e2enode: proxyd DaemonSet pod Ready %.1fs after apply", proxydReadyAfter.Seconds())
	return nil
}

// proxydLogs returns the tail of the proxyd container logs (from the
// kubelet's pod log dir, no kubectl logs round trip).
func proxydLogs(ctx context.Context) string {
	m, _ := filepath.Glob(filepath.Join(theNode.Dir, "pod-logs", "kube-system_proxyd-*", "proxyd", "*.log"))
	var b strings.Builder
	for _, f := range m {
		fmt.Fprintf(&b, "== %s\n%s\n", f, tail(f, 30))
	}
	if len(m) == 0 {
		out, _ := theLab.Kubectl(ctx, "-n", "kube-system", "get", "pods", "-o", "wide")
		b.WriteString("(no proxyd log)\n" + out)
	}
	return b.String()
}

func need(t *testing.T) *Node {
	t.Helper()
	if startErr != nil || theNode == nil {
		t.Fatalf("node not up: %v", startErr)
	}
	return theNode
}

func TestNodeAndProxydReady(t *testing.T) {
	n := need(t)
	no, err := n.Client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node %s kubelet %s runtime %s; timings %v; proxyd Ready %.1fs after apply",
		no.Name, no.Status.NodeInfo.KubeletVersion, no.Status.NodeInfo.ContainerRuntimeVersion, n.Timings, proxydReadyAfter.Seconds())
	pods, err := n.WaitPodsReady(context.Background(), "kube-system", "app.kubernetes.io/name=proxyd", 1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p := pods[0]
	c := p.Spec.Containers[0]
	if c.Image != ProxydImage || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("proxyd container: image %q liveness %+v", c.Image, c.LivenessProbe)
	}
	if rc := p.Status.ContainerStatuses[0].RestartCount; rc != 0 {
		t.Errorf("proxyd restarted %d times:\n%s", rc, proxydLogs(context.Background()))
	}
	code, body, err := theLab.HTTPGet(context.Background(), theLab.NodeNS, "http://"+theLab.NodeIP+":10256/healthz")
	if err != nil || code != 200 {
		t.Errorf("proxyd /healthz from the node: %d %q %v", code, body, err)
	}
}
