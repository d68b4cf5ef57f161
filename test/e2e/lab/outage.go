package lab

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// StopAPIServer stops kube-apiserver and waits until it has exited; etcd
// keeps running. StartAPIServer brings it back. It sends SIGTERM, then
// SIGKILL after 5 s: kube-apiserver v1.37 stops listening at once but was
// seen to linger for more than 30 s after that.
func (l *Lab) StopAPIServer() error {
	l.mu.Lock()
	p := l.apiserver
	l.mu.Unlock()
	if p == nil || p.Exited() {
		return errors.New("lab: kube-apiserver is not running")
	}
	if err := p.Stop(termSignal, 5*time.Second); err != nil && !errors.Is(err, ErrKilled) {
		return fmt.Errorf("lab: stop kube-apiserver: %w", err)
	}
	return nil
}

// APIServerRunning reports whether kube-apiserver is running.
func (l *Lab) APIServerRunning() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.apiserver != nil && !l.apiserver.Exited()
}

// StartAPIServer starts kube-apiserver again with the flags of the first
// start, waits for /readyz and returns how long that took from exec.
func (l *Lab) StartAPIServer(ctx context.Context) (time.Duration, error) {
	l.mu.Lock()
	p := l.apiserver
	l.mu.Unlock()
	if p != nil && !p.Exited() {
		return 0, errors.New("lab: kube-apiserver is already running")
	}
	if err := l.startAPIServer(ctx); err != nil {
		return 0, err
	}
	return l.ReadyzDuration, nil
}
