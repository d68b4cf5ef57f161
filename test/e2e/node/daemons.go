package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// containerdConfig is a CRI config whose every directory is under dir. The
// workarounds are the ones LAB.md lists for this machine.
const containerdConfig = `version = 2
root = "{{dir}}/containerd/root"
state = "{{dir}}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{{dir}}/containerd/containerd.sock"
[ttrpc]
  address = "{{dir}}/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{{dir}}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{pause}}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{{dir}}/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{{dir}}/cni/net.d"
    max_conf_num = 1
`

// cniConfig is a bridge + host-local (+ portmap) network on cni0.
const cniConfig = `{
  "cniVersion": "0.4.0",
  "name": "pxd-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "` + CNIBridge + `",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "{{dir}}/cni/ipam",
        "ranges": [[{"subnet": "` + CNISubnet + `", "gateway": "` + CNIGateway + `"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

// kubeletConfig: cgroupfs on this cgroup-v1 hybrid host, no swap check, no
// image GC or disk eviction (the imported images cannot be pulled back),
// every directory under dir.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{{dir}}/containerd/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: "{{ca}}"}
authorization: {mode: AlwaysAllow}
address: 0.0.0.0
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podLogsDir: "{{dir}}/pod-logs"
volumePluginDir: "{{dir}}/kubelet/volume-plugins"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"}
serializeImagePulls: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
fileCheckFrequency: 5s
`

func render(tmpl string, kv ...string) string {
	return strings.NewReplacer(kv...).Replace(tmpl)
}

func (n *Node) startContainerd(ctx context.Context) error {
	for _, d := range []string{"containerd/root", "containerd/state", "containerd/runc", "containerd/opt", "cni/net.d", "cni/ipam", "pod-logs", "kubelet"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	cfgPath := filepath.Join(n.Dir, "containerd", "config.toml")
	if err := os.WriteFile(cfgPath, []byte(render(containerdConfig, "{{dir}}", n.Dir, "{{pause}}", PauseImage)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "cni/net.d/10-pxd.conflist"), []byte(render(cniConfig, "{{dir}}", n.Dir)), 0o644); err != nil {
		return err
	}
	var err error
	if n.containerd, err = startDaemon(n.Lab.NodeNS, n.Dir, "containerd.log", "containerd", "--config", cfgPath); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", n.Sock); err == nil {
			c.Close()
			if _, err := n.ctr(ctx, "version"); err == nil {
				return nil
			}
		}
		if n.containerd.exited() || time.Now().After(deadline) {
			return fmt.Errorf("containerd not up (%v):\n%s", n.containerd.err, tail(n.containerd.log, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (n *Node) startControlPlane() error {
	l := n.Lab
	bin := n.tools
	kcmKC, err := l.Kubeconfig("kube-controller-manager", "system:kube-controller-manager", "system:masters")
	if err != nil {
		return err
	}
	schedKC, err := l.Kubeconfig("kube-scheduler", "system:kube-scheduler", "system:masters")
	if err != nil {
		return err
	}
	n.kcm, err = startDaemon(l.NodeNS, n.Dir, "kube-controller-manager.log", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+kcmKC,
		"--leader-elect=false",
		"--service-account-private-key-file="+filepath.Join(l.Dir, "pki", "sa.key"),
		"--root-ca-file="+l.CAFile(),
		"--use-service-account-credentials=false",
		"--allocate-node-cidrs=false",
		"--bind-address=127.0.0.1",
		"--cluster-cidr="+lab.ClusterCIDRs,
		"--service-cluster-ip-range="+lab.ServiceCIDRs,
		"--node-monitor-grace-period=20s",
		"--concurrent-service-endpoint-syncs=5",
		"--endpointslice-updates-batch-period=0s",
		"--v=1",
	)
	if err != nil {
		return err
	}
	n.sched, err = startDaemon(l.NodeNS, n.Dir, "kube-scheduler.log", filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig="+schedKC,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--v=1",
	)
	return err
}

func (n *Node) startKubelet() error {
	l := n.Lab
	kc, err := l.Kubeconfig("kubelet", "system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(n.Dir, "kubelet", "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(render(kubeletConfig, "{{dir}}", n.Dir, "{{ca}}", l.CAFile())), 0o644); err != nil {
		return err
	}
	n.kubelet, err = startDaemon(l.NodeNS, n.Dir, "kubelet.log", filepath.Join(n.tools, "kubelet"),
		"--config="+cfgPath,
		"--kubeconfig="+kc,
		"--hostname-override="+n.Name,
		"--node-ip="+l.NodeIP+","+l.NodeIPv6,
		"--root-dir="+filepath.Join(n.Dir, "kubelet", "root"),
		"--cert-dir="+filepath.Join(n.Dir, "kubelet", "pki"),
		"--v=1",
	)
	return err
}
