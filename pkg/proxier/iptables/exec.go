package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// restorer writes and reads one family's tables in bulk.
type restorer interface {
	// Restore applies restore input with --noflush: only the chains it
	// names change. It is one batch: on error nothing of it is trusted.
	Restore(ctx context.Context, data []byte) error
	// Save returns one table as iptables-save prints it.
	Save(ctx context.Context, table string) ([]byte, error)
	// Test applies restore input to empty tables in a network namespace
	// of its own, which it then drops: the kernel's verdict on the text,
	// with no effect on the node's rules.
	Test(ctx context.Context, data []byte) error
}

// execRestorer runs iptables-restore and iptables-save.
type execRestorer struct {
	restore, save string // absolute paths
}

// lockWait is how long iptables-restore waits for the xtables lock.
const lockWait = "5"

// Restore runs "iptables-restore --noflush -w 5" with data on stdin.
func (e *execRestorer) Restore(ctx context.Context, data []byte) error {
	cmd := exec.CommandContext(ctx, e.restore, "--noflush", "-w", lockWait)
	cmd.Stdin = bytes.NewReader(data)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if l := failedLine(msg, data); l != "" {
			msg += "; the line: " + l
		}
		return fmt.Errorf("%s: %w: %s", e.restore, err, msg)
	}
	return nil
}

// Test runs "iptables-restore -w 5" with data on stdin in a new network
// namespace, which ends with it. (iptables-restore --test is no use here:
// iptables-nft's checks nothing the kernel would, iptables-legacy's not
// the hooks a target may be reached from.)
func (e *execRestorer) Test(ctx context.Context, data []byte) error {
	cmd := exec.CommandContext(ctx, e.restore, "-w", lockWait)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	cmd.Stdin = bytes.NewReader(data)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s in a scratch network namespace: %w: %s", e.restore, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Save runs "iptables-save -t table".
func (e *execRestorer) Save(ctx context.Context, table string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, e.save, "-t", table)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", e.save, table, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// lineRE finds the line number in iptables-restore's error messages
// ("line 4 failed", "Error occurred at line: 4", "line 2: CHAIN_DEL failed").
var lineRE = regexp.MustCompile(`line:? (\d+)`)

// failedLine returns the input line that msg blames, if it names one.
func failedLine(msg string, data []byte) string {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return ""
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n < 1 {
		return ""
	}
	for line := range bytes.Lines(data) {
		n--
		if n == 0 {
			return strings.TrimSpace(string(line))
		}
	}
	return ""
}
