package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig returns an admin client config whose connections are dialed
// inside NodeNS (where the apiserver listens). QPS is 500 and Burst 1000;
// callers may change them.
func (l *Lab) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("lab: admin kubeconfig: %w", err)
	}
	cfg.Dial = DialContext(l.NodeNS)
	cfg.QPS, cfg.Burst = 500, 1000
	cfg.UserAgent = "proxyd-lab"
	return cfg, nil
}

// Clientset returns an admin (system:masters) client for the lab's apiserver.
func (l *Lab) Clientset() (kubernetes.Interface, error) {
	cfg, err := l.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("lab: clientset: %w", err)
	}
	return cs, nil
}

// Kubectl runs BinDir/kubectl --kubeconfig AdminKubeconfig args... inside
// NodeNS and returns its stdout; on failure the error includes stderr.
func (l *Lab) Kubectl(ctx context.Context, args ...string) (string, error) {
	kubectl := filepath.Join(l.BinDir, "kubectl")
	argv := append([]string{"netns", "exec", l.NodeNS, kubectl, "--kubeconfig", l.AdminKubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// HTTPGet sends one GET for url from inside the network namespace ns (the
// socket lives there; use IP literals) and returns the status code and body.
// HTTPS certificates are not verified. Without a deadline in ctx the request
// times out after 10 s.
func (l *Lab) HTTPGet(ctx context.Context, ns, url string) (int, string, error) {
	c := &http.Client{
		Transport: &http.Transport{
			DialContext:       DialContext(ns),
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			DisableKeepAlives: true,
		},
		Timeout: 10 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", fmt.Errorf("lab: GET %s: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("lab: GET %s in %s: %w", url, ns, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, string(b), fmt.Errorf("lab: GET %s in %s: body: %w", url, ns, err)
	}
	return resp.StatusCode, string(b), nil
}

// ClientResult is what `echo client` reports. Counts has, per answering Pod
// name, the connections (TCP) or sockets (UDP) whose requests were all
// answered; Errors has the failed ones by their first error; together they
// add up to the count asked for.
type ClientResult struct {
	Counts map[string]int `json:"counts"`
	Errors struct {
		Refused int `json:"refused"` // ECONNREFUSED (TCP RST, ICMP port unreachable)
		Timeout int `json:"timeout"` // no answer within the timeout
		Other   int `json:"other"`
	} `json:"errors"`
	// StickyViolations counts connections whose answers came from more
	// than one name.
	StickyViolations int `json:"sticky_violations"`
	// ErrorSamples holds the first error message of each error kind.
	ErrorSamples map[string]string `json:"error_samples,omitempty"`
}

// Answered returns the number of connections that got all their answers.
func (r ClientResult) Answered() int {
	n := 0
	for _, c := range r.Counts {
		n += c
	}
	return n
}

// Failed returns the number of connections that failed.
func (r ClientResult) Failed() int { return r.Errors.Refused + r.Errors.Timeout + r.Errors.Other }

// TrafficOptions configures TrafficWith.
type TrafficOptions struct {
	Proto           string        // "tcp" or "udp"
	Addr            string        // IP:PORT ([IPv6]:PORT)
	Count           int           // connections (TCP) or sockets (UDP)
	RequestsPerConn int           // requests on each; default 1
	Timeout         time.Duration // per dial and per answer; default 2 s
	Parallel        int           // connections in flight; default 4
	SourcePort      int           // local port (with Count 1); 0: any
}

// Traffic runs `echo client` in ns: count connections (TCP) or sockets (UDP)
// to addr, requestsPerConn requests each, 2 s timeout, 4 in parallel.
func (l *Lab) Traffic(ctx context.Context, ns, proto, addr string, count, requestsPerConn int) (ClientResult, error) {
	return l.TrafficWith(ctx, ns, TrafficOptions{Proto: proto, Addr: addr, Count: count, RequestsPerConn: requestsPerConn})
}

// TrafficWith is Traffic with all of echo client's knobs.
func (l *Lab) TrafficWith(ctx context.Context, ns string, o TrafficOptions) (ClientResult, error) {
	var res ClientResult
	if o.RequestsPerConn <= 0 {
		o.RequestsPerConn = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.Proto != "tcp" && o.Proto != "udp" {
		return res, fmt.Errorf("lab: traffic proto %q: want tcp or udp", o.Proto)
	}
	argv := []string{"netns", "exec", ns, l.EchoBin, "client",
		"--proto", o.Proto, "--addr", o.Addr,
		"--count", strconv.Itoa(o.Count),
		"--requests-per-conn", strconv.Itoa(o.RequestsPerConn),
		"--timeout", o.Timeout.String(),
		"--parallel", strconv.Itoa(o.Parallel),
	}
	if o.SourcePort != 0 {
		argv = append(argv, "--source-port", strconv.Itoa(o.SourcePort))
	}
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("lab: echo client in %s to %s/%s: %w: %s", ns, o.Proto, o.Addr, err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return res, fmt.Errorf("lab: echo client output %q: %w", stdout.String(), err)
	}
	if res.Counts == nil {
		res.Counts = map[string]int{}
	}
	if res.Answered()+res.Failed() != o.Count {
		return res, errors.New("lab: echo client result does not add up to --count: " + stdout.String())
	}
	return res, nil
}
