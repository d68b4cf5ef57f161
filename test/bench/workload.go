package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

const (
	benchNS     = "default"
	benchPort   = 80
	benchPortNm = "http"
)

// workload is the N selector-less Services, each with one EndpointSlice of
// one endpoint per lab Pod, that every contender is measured against.
type workload struct {
	cs     kubernetes.Interface
	names  []string                     // bench-00000 ...
	ips    []string                     // their ClusterIPs
	slices []*discoveryv1.EndpointSlice // latest version of each slice
	ready  []int                        // ready endpoints in each slice
	podIPs []string                     // endpoint addresses, one per Pod
	mu     sync.Mutex                   // guards slices and ready
	ipSet  map[[4]byte]bool             // ips as keys
	create time.Duration                // time to create everything
}

func svcName(i int) string { return fmt.Sprintf("bench-%05d", i) }

// retry runs f up to 6 times while it fails with an error the apiserver
// may recover from (throttling, timeouts, 5xx).
func retry(ctx context.Context, f func() error) error {
	var err error
	for attempt := 0; attempt < 6; attempt++ {
		if err = f(); err == nil {
			return nil
		}
		if !(apierrors.IsTooManyRequests(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
			apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || errors.Is(err, context.DeadlineExceeded)) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(100<<attempt) * time.Millisecond):
		}
	}
	return err
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	idx := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if err := f(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for i := 0; i < n; i++ {
		select {
		case idx <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(idx)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

// createWorkload creates n Services and their slices with workers
// concurrent writers (the client must be unthrottled).
func createWorkload(ctx context.Context, cs kubernetes.Interface, l *lab.Lab, n, workers int) (*workload, error) {
	w := &workload{cs: cs, names: make([]string, n), ips: make([]string, n),
		slices: make([]*discoveryv1.EndpointSlice, n), ready: make([]int, n), ipSet: map[[4]byte]bool{}}
	for _, p := range l.Pods {
		w.podIPs = append(w.podIPs, p.IP)
	}
	begin := time.Now()
	err := parallel(ctx, n, workers, func(ctx context.Context, i int) error {
		name := svcName(i)
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNS, Labels: map[string]string{"app": "bench"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
				Name: benchPortNm, Protocol: corev1.ProtocolTCP, Port: benchPort, TargetPort: intstr.FromInt32(lab.EchoPort)}}},
		}
		var out *corev1.Service
		if err := retry(ctx, func() (err error) {
			out, err = cs.CoreV1().Services(benchNS).Create(ctx, svc, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				out, err = cs.CoreV1().Services(benchNS).Get(ctx, name, metav1.GetOptions{})
			}
			return err
		}); err != nil {
			return fmt.Errorf("create service %s: %w", name, err)
		}
		es := w.newSlice(name, len(w.podIPs))
		var got *discoveryv1.EndpointSlice
		if err := retry(ctx, func() (err error) {
			got, err = cs.DiscoveryV1().EndpointSlices(benchNS).Create(ctx, es, metav1.CreateOptions{})
			return err
		}); err != nil {
			return fmt.Errorf("create slice of %s: %w", name, err)
		}
		w.mu.Lock()
		w.names[i], w.ips[i], w.slices[i], w.ready[i] = name, out.Spec.ClusterIP, got, len(w.podIPs)
		w.mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	w.create = time.Since(begin)
	for _, ip := range w.ips {
		k, err := ip4Key(ip)
		if err != nil {
			return nil, fmt.Errorf("service ClusterIP %q: %w", ip, err)
		}
		w.ipSet[k] = true
	}
	return w, nil
}

// newSlice is the slice of service name with its first ready endpoints
// ready and the rest not ready.
func (w *workload) newSlice(name string, ready int) *discoveryv1.EndpointSlice {
	port, proto, pname := int32(lab.EchoPort), corev1.ProtocolTCP, benchPortNm
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: benchNS,
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &port}},
	}
	node := "node2"
	for j, ip := range w.podIPs {
		r, f := j < ready, false
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &r, Serving: &r, Terminating: &f},
			NodeName:   &node,
		})
	}
	return es
}

// toggle flips service i between all endpoints ready and all but the last
// one ready, and returns how many ready endpoints the kernel should show
// afterwards, with the times just before and after the API write.
func (w *workload) toggle(ctx context.Context, i int) (want int, before, after time.Time, err error) {
	w.mu.Lock()
	cur := w.slices[i].DeepCopy()
	want = len(w.podIPs)
	if w.ready[i] == want {
		want--
	}
	w.mu.Unlock()
	for j := range cur.Endpoints {
		r := j < want
		cur.Endpoints[j].Conditions.Ready = &r
		cur.Endpoints[j].Conditions.Serving = &r
	}
	if cur.Annotations == nil {
		cur.Annotations = map[string]string{}
	}
	before = time.Now()
	cur.Annotations[corev1.EndpointsLastChangeTriggerTime] = before.UTC().Format(time.RFC3339Nano)
	out, err := w.cs.DiscoveryV1().EndpointSlices(benchNS).Update(ctx, cur, metav1.UpdateOptions{})
	after = time.Now()
	if err != nil {
		return 0, before, after, fmt.Errorf("update slice of %s: %w", w.names[i], err)
	}
	w.mu.Lock()
	w.slices[i], w.ready[i] = out, want
	w.mu.Unlock()
	return want, before, after, nil
}

// resetReady puts every toggled slice back to all endpoints ready, so the
// next contender starts from the same state.
func (w *workload) resetReady(ctx context.Context) error {
	var todo []int
	w.mu.Lock()
	for i, r := range w.ready {
		if r != len(w.podIPs) {
			todo = append(todo, i)
		}
	}
	w.mu.Unlock()
	return parallel(ctx, len(todo), 16, func(ctx context.Context, k int) error {
		_, _, _, err := w.toggle(ctx, todo[k])
		return err
	})
}
