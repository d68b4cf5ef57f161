//go:build e2e

package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestDaemonSetManifestIsAcceptedByTheAPIServer(t *testing.T) {
	e := needEnv(t)
	manifest, err := filepath.Abs("../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.lab.Kubectl(context.Background(), "apply", "--dry-run=server", "-f", manifest)
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	for _, want := range []string{"serviceaccount/proxyd", "clusterrole.rbac.authorization.k8s.io/proxyd", "clusterrolebinding.rbac.authorization.k8s.io/proxyd", "daemonset.apps/proxyd"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %s:\n%s", want, out)
		}
	}
	t.Log(strings.TrimSpace(out))
}
