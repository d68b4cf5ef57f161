package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
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

// cniConfig is a bridge + host-local (+ portmap) network on cni0; the
// gateway is the subnet's first address.
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
        "ranges": [[{"subnet": "{{subnet}}", "gateway": "{{gateway}}"}]],
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
	if err := os.WriteFile(cfgPath, []byte(render(containerdConfig, "{{dir}}", n.Dir, "{{pause}}", n.spec.SandboxImage)), 0o644); err != nil {
		return err
	}
	if n.PodCIDR != "" {
		if err := n.writeCNIConfig(); err != nil {
			return err
		}
	}
	var err error
	if n.containerd, err = startDaemon(n.NS, n.Dir, "containerd.log", "containerd", "--config", cfgPath); err != nil {
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

// writeCNIConfig writes the bridge network for n.PodCIDR; containerd
// watches the directory and the kubelet turns Ready once it is there.
func (n *Node) writeCNIConfig() error {
	_, subnet, err := net.ParseCIDR(n.PodCIDR)
	if err != nil {
		return fmt.Errorf("node %s: pod CIDR: %w", n.Name, err)
	}
	gw := append(net.IP(nil), subnet.IP.To4()...)
	if gw == nil {
		return fmt.Errorf("node %s: pod CIDR %s is not IPv4", n.Name, n.PodCIDR)
	}
	gw[3]++
	conf := render(cniConfig, "{{dir}}", n.Dir, "{{subnet}}", subnet.String(), "{{gateway}}", gw.String())
	return os.WriteFile(filepath.Join(n.Dir, "cni/net.d/10-pxd.conflist"), []byte(conf), 0o644)
}

func (n *Node) startKubelet() error {
	l := n.Lab
	kc, err := l.KubeconfigAt(n.spec.APIServer, "kubelet-"+n.Name, "system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	cfg := render(kubeletConfig, "{{dir}}", n.Dir, "{{ca}}", l.CAFile())
	if n.spec.CgroupRoot != "" {
		cfg += "cgroupRoot: " + n.spec.CgroupRoot + "\n"
	}
	if n.spec.ClusterDNS != "" {
		cfg += "clusterDNS: [" + n.spec.ClusterDNS + "]\n"
	}
	cfgPath := filepath.Join(n.Dir, "kubelet", "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	args := []string{filepath.Join(n.spec.ToolsDir, "kubelet"),
		"--config=" + cfgPath,
		"--kubeconfig=" + kc,
		"--hostname-override=" + n.Name,
		"--node-ip=" + strings.Join(n.spec.NodeIPs, ","),
		"--root-dir=" + filepath.Join(n.Dir, "kubelet", "root"),
		"--cert-dir=" + filepath.Join(n.Dir, "kubelet", "pki"),
		"--v=1",
	}
	if len(n.spec.Labels) > 0 {
		var kv []string
		for k, v := range n.spec.Labels {
			kv = append(kv, k+"="+v)
		}
		sort.Strings(kv)
		args = append(args, "--node-labels="+strings.Join(kv, ","))
	}
	n.kubelet, err = startDaemon(n.NS, n.Dir, "kubelet.log", args...)
	return err
}
