package explain

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// recentEntry is one line of /proc/net/xt_recent/NAME: a source address
// and the jiffies it was last seen at.
type recentEntry struct {
	addr     netip.Addr
	lastSeen uint64
}

// readRecent reads every list under dir (/proc/net/xt_recent): name →
// entries. A missing dir (xt_recent not loaded) is no lists.
func readRecent(dir string) (map[string][]recentEntry, error) {
	files, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string][]recentEntry{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f.Name()))
		if err != nil {
			return nil, err
		}
		entries, err := parseRecent(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		out[f.Name()] = entries
	}
	return out, nil
}

// parseRecent parses lines like
//
//	src=10.244.1.100 ttl: 64 last_seen: 4295304643 oldest_pkt: 1 4295304643
func parseRecent(b []byte) ([]recentEntry, error) {
	var out []recentEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var e recentEntry
		ok := false
		for i, w := range f {
			if a, found := strings.CutPrefix(w, "src="); found {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					return nil, fmt.Errorf("bad source in %q", sc.Text())
				}
				e.addr = addr
			}
			if w == "last_seen:" && i+1 < len(f) {
				v, err := strconv.ParseUint(f[i+1], 10, 64)
				if err != nil {
					return nil, fmt.Errorf("bad last_seen in %q", sc.Text())
				}
				e.lastSeen, ok = v, true
			}
		}
		if !e.addr.IsValid() || !ok {
			return nil, fmt.Errorf("unexpected line %q", sc.Text())
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// jiffyClock converts the kernel's jiffies to ages.
type jiffyClock struct {
	now uint64
	hz  float64
}

// readJiffies reads the kernel's jiffies (/proc/timer_list, which a
// container runtime may hide) and derives HZ from /proc/uptime: on 64-bit
// kernels jiffies start at 2^32 - 300·HZ at boot.
func readJiffies(timerList, uptime string) (jiffyClock, error) {
	tl, err := os.ReadFile(timerList)
	if err != nil {
		return jiffyClock{}, err
	}
	_, after, found := bytes.Cut(tl, []byte("\njiffies: "))
	if !found {
		return jiffyClock{}, fmt.Errorf("%s has no jiffies line", timerList)
	}
	now, err := strconv.ParseUint(string(bytes.Fields(after)[0]), 10, 64)
	if err != nil {
		return jiffyClock{}, fmt.Errorf("%s: %w", timerList, err)
	}
	up, err := os.ReadFile(uptime)
	if err != nil {
		return jiffyClock{}, err
	}
	secs, err := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	if err != nil || secs <= 330 {
		return jiffyClock{}, fmt.Errorf("uptime %q: too early to tell HZ", up)
	}
	hz := (float64(now) - (1 << 32)) / (secs - 300)
	best := 0.0
	for _, h := range []float64{100, 250, 300, 1000} {
		if math.Abs(hz-h) < math.Abs(hz-best) {
			best = h
		}
	}
	if math.Abs(hz-best) > best*0.05 {
		return jiffyClock{}, fmt.Errorf("cannot tell HZ (%.1f)", hz)
	}
	return jiffyClock{now: now, hz: best}, nil
}

// age is how long ago jiffies j was.
func (c jiffyClock) age(j uint64) time.Duration {
	if j >= c.now {
		return 0
	}
	return time.Duration(float64(c.now-j) / c.hz * float64(time.Second))
}
