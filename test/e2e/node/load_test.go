//go:build e2enode

package node

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// loadStats is what steady client load saw: every connection dials,
// sends one line, reads the Pod's name and closes.
type loadStats struct {
	conns, failed int
	// slow counts connections that took ≥ 900 ms: a SYN was lost and
	// retransmitted (the first retransmission is after 1 s).
	slow    int
	max     time.Duration
	samples []string // first failures and slow ones, with their time
	names   map[string]int
}

func (s loadStats) String() string {
	return fmt.Sprintf("%d connections, %d failed, %d slow (≥900ms), max %v, pods %v", s.conns, s.failed, s.slow,
		s.max.Round(time.Millisecond), s.names)
}

// steadyLoad runs workers connection loops from netns ns to addr until
// stop is closed; each dial has a 3 s timeout.
func steadyLoad(ns, addr string, workers int, stop <-chan struct{}) loadStats {
	dial := lab.DialContext(ns)
	begin := time.Now()
	var mu sync.Mutex
	st := loadStats{names: map[string]int{}}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				name, err := oneConn(dial, addr)
				d := time.Since(t0)
				mu.Lock()
				st.conns++
				if d > st.max {
					st.max = d
				}
				at := t0.Sub(begin).Seconds()
				switch {
				case err != nil:
					st.failed++
					if len(st.samples) < 20 {
						st.samples = append(st.samples, fmt.Sprintf("+%.2fs failed after %v: %v", at, d.Round(time.Millisecond), err))
					}
				case d >= 900*time.Millisecond:
					st.slow++
					if len(st.samples) < 20 {
						st.samples = append(st.samples, fmt.Sprintf("+%.2fs slow %v (%s)", at, d.Round(time.Millisecond), name))
					}
				}
				if err == nil {
					st.names[name]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Strings(st.samples)
	return st
}

func oneConn(dial func(context.Context, string, string) (net.Conn, error), addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}
