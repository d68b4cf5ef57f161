package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

var termSignal os.Signal = syscall.SIGTERM

// ErrKilled is wrapped by Process.Stop's error when the process outlived its
// timeout and was SIGKILLed.
var ErrKilled = errors.New("did not exit in time; killed")

// Process is a background daemon started by the lab in a network namespace.
type Process struct {
	// Cmd is the running command. Its PID is the daemon's own: `ip netns
	// exec` execs the daemon without forking.
	Cmd *exec.Cmd
	// Log is the file that receives the daemon's stdout and stderr.
	Log string

	name string
	tier int // Close stops lower tiers first; see stopAll
	done chan struct{}
	err  error
}

// Stop tiers: Close stops everything callers started first, then the
// Pods, then kube-apiserver, then etcd, so no daemon waits on a peer that is
// already gone.
const (
	tierUser = iota
	tierPod
	tierAPIServer
	tierEtcd
)

// StartProcess starts argv in the network namespace ns as a background daemon
// in its own session (setsid), with stdout and stderr appended to
// Dir/logName. The lab records its PID and Close stops it.
func (l *Lab) StartProcess(ns, logName string, argv ...string) (*Process, error) {
	return l.startProcess(tierUser, ns, logName, argv...)
}

func (l *Lab) startProcess(tier int, ns, logName string, argv ...string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("lab: StartProcess without a command")
	}
	if ns == "" {
		return nil, errors.New("lab: StartProcess needs a network namespace")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab: StartProcess after Close")
	}
	logPath := filepath.Join(l.Dir, logName)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: log for %s: %w", argv[0], err)
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start %s in %s: %w", argv[0], ns, err)
	}
	p := &Process{Cmd: cmd, Log: logPath, name: filepath.Base(argv[0]), tier: tier, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	// The start time does not change when ip execs the daemon.
	start, err := procStart(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, fmt.Errorf("lab: start time of %s: %w", argv[0], err)
	}
	l.procs = append(l.procs, p)
	l.rec.PIDs = append(l.rec.PIDs, procID{PID: cmd.Process.Pid, Start: start})
	if err := l.saveRecord(); err != nil {
		l.logf("lab %s: %v", l.ID, err)
	}
	return p, nil
}

// PID returns the daemon's process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited (and been reaped).
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns the process's exit error (nil for exit status 0) once Done is
// closed, and nil before.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends sig, waits up to timeout for the process to exit, then SIGKILLs
// it and returns an error wrapping ErrKilled. Stopping an exited process
// returns nil; the exit status itself is available from Err.
func (p *Process) Stop(sig os.Signal, timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	if err := p.Cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s (pid %d): %w", p.name, p.PID(), err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s (pid %d) after %v for %s: %w", p.name, p.PID(), sig, timeout, ErrKilled)
}

// stopAll stops procs tier by tier (see tierUser), the processes of one
// tier concurrently, each with SIGTERM and a 5 s grace period. A process that
// needed SIGKILL is logged, not reported as an error.
func (l *Lab) stopAll(procs []*Process) error {
	var errs []error
	for tier := tierUser; tier <= tierEtcd; tier++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range procs {
			if p.tier != tier {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := p.Stop(termSignal, 5*time.Second)
				if errors.Is(err, ErrKilled) {
					l.logf("lab %s: %v", l.ID, err)
					err = nil
				}
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	return errors.Join(errs...)
}

// Exec runs argv inside the network namespace ns (`ip netns exec ns argv...`)
// and returns its combined output; on failure the error includes it.
func (l *Lab) Exec(ctx context.Context, ns string, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("lab: Exec without a command")
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w\n%s", ns, strings.Join(argv, " "), err, tailString(string(out), 40))
	}
	return string(out), nil
}

// tailString returns the last n lines of s.
func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tailFile returns the last n lines of the file at path, or a note why not.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return tailString(string(b), n)
}
