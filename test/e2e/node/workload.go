package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// kubectlStdin runs kubectl (admin, inside the node netns) with stdin.
func (n *Node) kubectlStdin(ctx context.Context, stdin []byte, args ...string) (string, error) {
	l := n.Lab
	argv := append([]string{"netns", "exec", l.NodeNS, filepath.Join(l.BinDir, "kubectl"), "--kubeconfig", l.AdminKubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// ApplyProxyd applies the manifest file as it is, except that the
// DaemonSet goes through `kubectl set env --local` to get
// KUBERNETES_SERVICE_HOST/PORT = the apiserver's real address (the
// manifest has them commented out; see the report), and, if mode is not
// empty, its --mode arguments say mode. The image reference stays
// proxyd:dev, which is what hack/image tags the imported image.
func (n *Node) ApplyProxyd(ctx context.Context, manifest, mode string) error {
	b, err := os.ReadFile(manifest)
	if err != nil {
		return err
	}
	if mode != "" {
		// The proxyd container's and its init container's.
		modeArg := regexp.MustCompile(`(?m)^(\s*- )--mode=\S+$`)
		if len(modeArg.FindAll(b, -1)) == 0 {
			return fmt.Errorf("%s: no --mode argument", manifest)
		}
		b = modeArg.ReplaceAll(b, []byte("${1}--mode="+mode))
	}
	docs := regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1)
	var rest, ds []string
	for _, d := range docs {
		if regexp.MustCompile(`(?m)^kind:\s*DaemonSet\s*$`).MatchString(d) {
			ds = append(ds, d)
		} else if strings.TrimSpace(d) != "" {
			rest = append(rest, d)
		}
	}
	if len(ds) != 1 {
		return fmt.Errorf("%s: want one DaemonSet, found %d", manifest, len(ds))
	}
	if out, err := n.kubectlStdin(ctx, []byte(strings.Join(rest, "\n---\n")), "apply", "-f", "-"); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	withEnv, err := n.kubectlStdin(ctx, []byte(ds[0]), "set", "env", "--local", "-f", "-", "-o", "yaml",
		"KUBERNETES_SERVICE_HOST="+n.Lab.NodeIP, "KUBERNETES_SERVICE_PORT=6443")
	if err != nil {
		return err
	}
	if !strings.Contains(withEnv, "image: "+ProxydImage) {
		return fmt.Errorf("DaemonSet does not use image %s:\n%s", ProxydImage, withEnv)
	}
	if out, err := n.kubectlStdin(ctx, []byte(withEnv), "apply", "-f", "-"); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

// WaitPodsReady waits until the Pods matching selector in ns are exactly
// want, all Ready and none terminating; it returns them.
func (n *Node) WaitPodsReady(ctx context.Context, ns, selector string, want int, timeout time.Duration) ([]corev1.Pod, error) {
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		pods, err := n.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil {
			var ready []corev1.Pod
			var states []string
			for _, p := range pods.Items {
				states = append(states, p.Name+"="+podState(&p))
				if p.DeletionTimestamp == nil && PodReady(&p) {
					ready = append(ready, p)
				}
			}
			if len(ready) == want && len(pods.Items) == want {
				return ready, nil
			}
			last = strings.Join(states, " ")
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, fmt.Errorf("pods %s/%s: want %d Ready, have: %s", ns, selector, want, last)
}

func podState(p *corev1.Pod) string {
	s := string(p.Status.Phase)
	if PodReady(p) {
		s += "/Ready"
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Waiting != nil {
			s += "/" + c.State.Waiting.Reason
		}
		if c.RestartCount > 0 {
			s += fmt.Sprintf("/restarts=%d", c.RestartCount)
		}
	}
	if p.DeletionTimestamp != nil {
		s += "/Terminating"
	}
	return s
}

// PodReady reports the Pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// EchoDeployment is a Deployment of echo Pods (label app=name) serving TCP
// 8080, named after their Pod (downward API), with an HTTP readiness probe
// every second.
func EchoDeployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	zero := int64(1)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &zero,
					Containers: []corev1.Container{{
						Name:            "echo",
						Image:           EchoImage,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"serve", "--name", "$(POD_NAME)", "--port", "8080", "--udp-port", "8080"},
						Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
						Ports: []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}},
							PeriodSeconds:    1,
							TimeoutSeconds:   1,
							FailureThreshold: 1,
							SuccessThreshold: 1,
						},
					}},
				},
			},
		},
	}
}

// EchoPod is a single echo Pod (a client's network namespace holder too).
func EchoPod(name string) *corev1.Pod {
	d := EchoDeployment(name, 1)
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": name}}, Spec: d.Spec.Template.Spec}
}

// Service is a Service for app=selector on TCP 8080; headless if clusterIP is "None".
func Service(name, selector, clusterIP string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector:  map[string]string{"app": selector},
			ClusterIP: clusterIP,
			Ports:     []corev1.ServicePort{{Name: "tcp", Port: 8080, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// ReadyEndpoints counts the ready endpoints in the Service's EndpointSlices.
func (n *Node) ReadyEndpoints(ctx context.Context, ns, svc string) (int, error) {
	names, err := n.ReadyEndpointPods(ctx, ns, svc)
	return len(names), err
}

// ReadyEndpointPods returns the sorted Pod names (targetRef) of the ready
// endpoints in the Service's EndpointSlices.
func (n *Node) ReadyEndpointPods(ctx context.Context, ns, svc string) ([]string, error) {
	sl, err := n.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range sl.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				name := "?"
				if e.TargetRef != nil {
					name = e.TargetRef.Name
				}
				names = append(names, name)
			}
		}
	}
	sort.Strings(names)
	return names, nil
}

// WaitReadyEndpoints waits until the Service's slices have want ready endpoints.
func (n *Node) WaitReadyEndpoints(ctx context.Context, ns, svc string, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	got := -1
	for time.Now().Before(deadline) {
		var err error
		if got, err = n.ReadyEndpoints(ctx, ns, svc); err == nil && got == want {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("service %s/%s: %d ready endpoints, want %d", ns, svc, got, want)
}

// PodNetns returns the name (under /run/netns) of the CRI network namespace
// holding ip: the Pod's own network namespace, entered by the tests to run
// the echo client "from the Pod".
func PodNetns(ctx context.Context, ip string) (string, error) {
	for _, p := range cniNetns() {
		name := filepath.Base(p)
		out, err := exec.CommandContext(ctx, "ip", "-n", name, "-4", "-o", "addr", "show").Output()
		if err == nil && strings.Contains(string(out), " "+ip+"/") {
			return name, nil
		}
	}
	return "", fmt.Errorf("no CRI netns holds %s", ip)
}

// Traffic runs lab echo client traffic from the network namespace ns.
func (n *Node) Traffic(ctx context.Context, ns, addr string, count int) (lab.ClientResult, error) {
	return n.Lab.TrafficWith(ctx, ns, lab.TrafficOptions{Proto: "tcp", Addr: addr, Count: count, Parallel: 8, Timeout: 2 * time.Second})
}

// PodNetnsOf returns the path of the network namespace of Pod ns/name on
// this node, from its sandbox in this node's containerd (unlike PodNetns,
// right even when another lab has a Pod with the same IP).
func (n *Node) PodNetnsOf(ctx context.Context, ns, name string) (string, error) {
	filter := fmt.Sprintf(`labels."io.kubernetes.pod.name"==%s,labels."io.kubernetes.pod.namespace"==%s,labels."io.cri-containerd.kind"==sandbox`, name, ns)
	out, err := n.ctr(ctx, "containers", "ls", "-q", filter)
	if err != nil {
		return "", fmt.Errorf("ctr containers ls: %w: %s", err, out)
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return "", fmt.Errorf("no sandbox of pod %s/%s on %s", ns, name, n.Name)
	}
	info, err := n.ctr(ctx, "containers", "info", ids[len(ids)-1])
	if err != nil {
		return "", fmt.Errorf("ctr containers info: %w", err)
	}
	var c struct {
		Spec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"Spec"`
	}
	if err := json.Unmarshal([]byte(info), &c); err != nil {
		return "", fmt.Errorf("ctr containers info: %w", err)
	}
	for _, nsp := range c.Spec.Linux.Namespaces {
		if nsp.Type == "network" && nsp.Path != "" {
			return filepath.Base(nsp.Path), nil
		}
	}
	return "", fmt.Errorf("sandbox of pod %s/%s has no network namespace path", ns, name)
}
