package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// soakNS holds every object the soak makes.
const soakNS = "soak"

// service is a selector-less TCP Service on port (targeting the echo
// Pods) with its name label.
func service(name string, port int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: soakNS},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "echo", Protocol: corev1.ProtocolTCP,
			Port: port, TargetPort: intstr.FromInt32(lab.EchoPort)}}},
	}
}

// slice is service name's one EndpointSlice: every Pod of pods, ready
// where ready says so.
func slice(name string, pods []string, ready func(i int) bool) *discoveryv1.EndpointSlice {
	port, proto, pname := int32(lab.EchoPort), corev1.ProtocolTCP, "echo"
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: soakNS,
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &port}},
	}
	for i, ip := range pods {
		r, f := ready(i), false
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &r, Serving: &r, Terminating: &f}})
	}
	return es
}

// churner writes Services and slices of a pool of names at a steady rate:
// a missing name is created; an existing one has its endpoints flapped
// (half the writes), its port changed, or is deleted. Its counters are
// read when run has returned.
type churner struct {
	cs          kubernetes.Interface
	pods        []string
	first, pool int // the names churn-<first> … churn-<first+pool-1>
	live        map[int]bool
	rng         *rand.Rand

	ops, errs int
	byKind    map[string]int
	lastErr   error
	// progress, if set, counts writes as they happen, for sampling.
	progress *atomic.Int64
}

func newChurner(cs kubernetes.Interface, pods []string, first, pool int) *churner {
	return &churner{cs: cs, pods: pods, first: first, pool: pool, live: map[int]bool{},
		rng: rand.New(rand.NewPCG(uint64(first), 2)), byKind: map[string]int{}}
}

// churn runs workers churners at rate/workers each over disjoint parts of
// a pool of names, so that one slow API answer does not hold the rate
// down, and returns their counters summed.
func churn(ctx context.Context, cs kubernetes.Interface, pods []string, pool, workers int, rate float64, progress *atomic.Int64) *churner {
	total := &churner{byKind: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range workers {
		c := newChurner(cs, pods, w*pool/workers, pool/workers)
		c.progress = progress
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(ctx, rate/float64(workers))
			mu.Lock()
			defer mu.Unlock()
			total.ops += c.ops
			total.errs += c.errs
			for k, n := range c.byKind {
				total.byKind[k] += n
			}
			if c.lastErr != nil {
				total.lastErr = c.lastErr
			}
		}()
	}
	wg.Wait()
	return total
}

// run writes at rate a second until ctx ends. Every write is one API
// call; a failed one is counted and the name forgotten or kept as the API
// says.
func (c *churner) run(ctx context.Context, rate float64) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		kind, err := c.step(ctx)
		if ctx.Err() != nil {
			return
		}
		c.ops++
		c.byKind[kind]++
		if c.progress != nil {
			c.progress.Add(1)
		}
		if err != nil {
			c.errs++
			c.lastErr = fmt.Errorf("%s: %w", kind, err)
		}
	}
}

func (c *churner) step(ctx context.Context) (string, error) {
	i := c.first + c.rng.IntN(c.pool)
	name := fmt.Sprintf("churn-%03d", i)
	svcs, slices := c.cs.CoreV1().Services(soakNS), c.cs.DiscoveryV1().EndpointSlices(soakNS)
	if !c.live[i] {
		// Created in two writes: the Service, then on a later step its slice.
		_, err := svcs.Create(ctx, service(name, 80), metav1.CreateOptions{})
		if err == nil {
			c.live[i] = true
		}
		return "create service", err
	}
	switch r := c.rng.IntN(10); {
	case r < 5:
		up := c.rng.Uint64()
		_, err := slices.Update(ctx, slice(name, c.pods, func(j int) bool { return up&(1<<j) != 0 }), metav1.UpdateOptions{})
		if err != nil {
			_, err = slices.Create(ctx, slice(name, c.pods, func(j int) bool { return up&(1<<j) != 0 }), metav1.CreateOptions{})
		}
		return "flap endpoints", err
	case r < 8:
		s, err := svcs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "update service", err
		}
		s.Spec.Ports[0].Port = 80 + int32(c.rng.IntN(3))
		_, err = svcs.Update(ctx, s, metav1.UpdateOptions{})
		return "update service", err
	default:
		err := svcs.Delete(ctx, name, metav1.DeleteOptions{})
		if err == nil {
			c.live[i] = false
			// Its slice goes too (no controller here does it).
			_ = slices.Delete(ctx, name+"-1", metav1.DeleteOptions{})
		}
		return "delete service", err
	}
}
