package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RecordDir holds one JSON record per running lab: its owner (the test
// process) and the namespaces and daemons it made, so Sweep can tell
// leftovers of a crashed run from a lab that is still in use.
const RecordDir = "/run/pxd-lab"

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// labNetns matches the namespace names a lab creates (and nothing else with
// the pxd- prefix, which other tests use for their own namespaces).
var labNetns = regexp.MustCompile(`^pxd-([0-9a-f]{8})-(node[0-9]*|client|pod[0-9]+|wire)$`)

// procID names a process unambiguously: a PID plus its start time, so a
// recycled PID is never mistaken for ours.
type procID struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// ownerRecord is what a lab writes to RecordDir/<id>.json.
type ownerRecord struct {
	ID         string   `json:"id"`
	OwnerPID   int      `json:"owner_pid"`
	OwnerStart uint64   `json:"owner_start"`
	Dir        string   `json:"dir"`
	KeepDir    bool     `json:"keep_dir"` // PROXYD_LAB_KEEP=1 was set
	Netns      []string `json:"netns"`
	PIDs       []procID `json:"pids"`
}

func recordPath(id string) string { return filepath.Join(RecordDir, id+".json") }

// saveRecord rewrites the lab's record atomically. Callers hold l.mu or
// run before the lab is shared.
func (l *Lab) saveRecord() error {
	if err := os.MkdirAll(RecordDir, 0o755); err != nil {
		return fmt.Errorf("lab record dir: %w", err)
	}
	l.rec.Netns = l.namespaces()
	b, err := json.MarshalIndent(l.rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab record: %w", err)
	}
	tmp := recordPath(l.ID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write lab record: %w", err)
	}
	if err := os.Rename(tmp, recordPath(l.ID)); err != nil {
		return fmt.Errorf("write lab record: %w", err)
	}
	return nil
}

// Sweep cleans up after labs whose owning process is gone: it kills their
// recorded daemons (only when PID and start time both match), deletes their
// namespaces, temp dirs (unless the dead run had PROXYD_LAB_KEEP=1) and records, and deletes
// lab-named namespaces (pxd-<8 hex>-node|nodeN|client|podN|wire) that have no record at
// all. Labs of live processes, and pxd- namespaces not named like a lab's,
// are left alone. Start calls it.
func Sweep() { sweep(log.Printf) }

func sweep(logf func(string, ...any)) {
	// List namespaces before reading records: a lab writes its record before
	// it creates a namespace, so every namespace seen here whose lab is alive
	// has a record by the time the records are read.
	var names []string
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			if labNetns.MatchString(e.Name()) {
				names = append(names, e.Name())
			}
		}
	}
	live := map[string]bool{}
	swept := map[string]bool{}
	ents, _ := os.ReadDir(RecordDir)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(RecordDir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var rec ownerRecord
		if err := json.Unmarshal(b, &rec); err != nil || rec.ID == "" {
			logf("lab sweep: ignoring unreadable record %s: %v", path, err)
			continue
		}
		if alive(procID{rec.OwnerPID, rec.OwnerStart}) {
			live[rec.ID] = true
			continue
		}
		logf("lab sweep: owner %d of lab %s is gone; cleaning up its %d processes and %d namespaces",
			rec.OwnerPID, rec.ID, len(rec.PIDs), len(rec.Netns))
		killRecorded(rec.PIDs, logf)
		for _, ns := range rec.Netns {
			if err := deleteNetns(ns); err != nil {
				logf("lab sweep: %v", err)
			}
		}
		if rec.Dir != "" && !rec.KeepDir && strings.Contains(rec.Dir, "pxd-lab-"+rec.ID) {
			_ = os.RemoveAll(rec.Dir)
		}
		_ = os.Remove(path)
		swept[rec.ID] = true
	}
	for _, ns := range names {
		id := labNetns.FindStringSubmatch(ns)[1]
		if live[id] {
			continue
		}
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err != nil {
			continue // deleted above
		}
		why := "no lab record"
		if swept[id] {
			why = "its dead lab's record did not list it"
		}
		logf("lab sweep: deleting orphan namespace %s (%s)", ns, why)
		if err := deleteNetns(ns); err != nil {
			logf("lab sweep: %v", err)
		}
	}
}

// killRecorded SIGKILLs the recorded processes that are still the ones
// recorded and waits up to 5 s for them to disappear.
func killRecorded(pids []procID, logf func(string, ...any)) {
	var left []procID
	for _, p := range pids {
		if !alive(p) {
			continue
		}
		logf("lab sweep: killing leftover process %d", p.PID)
		if err := syscall.Kill(p.PID, syscall.SIGKILL); err == nil {
			left = append(left, p)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range left {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// alive reports whether the process p still exists (and is not a zombie).
func alive(p procID) bool {
	if p.PID <= 0 {
		return false
	}
	st, state, err := procStat(p.PID)
	return err == nil && st == p.Start && state != "Z" && state != "X"
}

// procStart returns the start time of pid in clock ticks since boot.
func procStart(pid int) (uint64, error) {
	st, _, err := procStat(pid)
	return st, err
}

// procStat reads the start time and state of pid from /proc/PID/stat.
func procStat(pid int) (start uint64, state string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", err
	}
	// The command name (field 2) may contain spaces and parentheses: the
	// fields after it start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so field 22 (starttime) is f[19].
	if len(f) < 20 {
		return 0, "", fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, f[0], err
}

// deleteNetns deletes a named namespace; a missing one is not an error.
func deleteNetns(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("delete netns %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
