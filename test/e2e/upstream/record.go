package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// Run is the record of one suite run against one contender.
type Run struct {
	Contender string `json:"contender"`
	// Tag tells repeated runs apart ("1", "2", "3" for the flake check).
	Tag     string `json:"tag,omitempty"`
	Date    string `json:"date"`
	Machine string `json:"machine"`
	Nodes   int    `json:"nodes"`
	Procs   int    `json:"procs"`
	Focus   string `json:"focus"`
	Skip    string `json:"skip"`
	Wall    struct {
		ClusterUp float64 `json:"cluster_up_s"`
		Deploy    float64 `json:"deploy_s"`
		Suite     float64 `json:"suite_s"`
	} `json:"wall"`
	Tests map[string]Result `json:"tests"`
	// NotRun says why the contender could not run at all (no tests then).
	NotRun string `json:"not_run,omitempty"`
	// Excluded are the tests of the focus that the skip patterns leave
	// out, with the reason (from e2e.test --list-tests).
	Excluded map[string]string `json:"excluded,omitempty"`
}

// Result is one test's outcome.
type Result struct {
	State   string  `json:"state"` // passed, failed, skipped
	Seconds float64 `json:"seconds"`
	// Message is the skip reason or the first lines of the failure.
	Message string `json:"message,omitempty"`
}

func (r Run) counts() (passed, failed, skipped int) {
	for _, t := range r.Tests {
		switch t.State {
		case "passed":
			passed++
		case "failed":
			failed++
		default:
			skipped++
		}
	}
	return
}

// Name is the record's file name without .json.
func (r Run) Name() string {
	if r.Tag == "" {
		return r.Contender
	}
	return r.Contender + "-" + r.Tag
}

func saveRun(out, name string, r Run) error {
	dir := filepath.Join(out, "runs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".json"), append(b, '\n'), 0o644)
}

func loadRuns(out string) ([]Run, error) {
	m, err := filepath.Glob(filepath.Join(out, "runs", "*.json"))
	if err != nil {
		return nil, err
	}
	var runs []Run
	for _, p := range m {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var r Run
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		runs = append(runs, r)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].Name() < runs[j].Name() })
	return runs, nil
}

type junitSuites struct {
	Suites []struct {
		Cases []struct {
			Name    string  `xml:"name,attr"`
			Status  string  `xml:"status,attr"`
			Time    float64 `xml:"time,attr"`
			Skipped *struct {
				Message string `xml:"message,attr"`
			} `xml:"skipped"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// parseJUnit reads ginkgo's JUnit report: the selected specs (It nodes;
// suite setup nodes only when they failed).
func parseJUnit(path string) (map[string]Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]Result{}
	for _, su := range s.Suites {
		for _, c := range su.Cases {
			name, isIt := strings.CutPrefix(c.Name, "[It] ")
			name = stripLabels(name)
			if c.Skipped != nil && strings.TrimSpace(c.Skipped.Message) == "skipped" {
				continue // filtered out by --focus, --skip or --label-filter
			}
			r := Result{Seconds: c.Time}
			switch {
			case c.Failure != nil || c.Error != nil || c.Status == "failed" || c.Status == "panicked" ||
				c.Status == "timedout" || c.Status == "interrupted" || c.Status == "aborted":
				r.State = "failed"
				if c.Failure != nil {
					r.Message = firstLines(c.Failure.Message, 6)
				} else if c.Error != nil {
					r.Message = firstLines(c.Error.Message, 6)
				}
			case c.Skipped != nil || c.Status == "skipped" || c.Status == "pending":
				r.State = "skipped"
				if c.Skipped != nil {
					r.Message = firstLines(c.Skipped.Message, 2)
				}
			default:
				r.State = "passed"
			}
			if !isIt && r.State != "failed" {
				continue
			}
			out[name] = r
		}
	}
	return out, nil
}

// stripLabels drops the " [label, …]" list ginkgo's JUnit report appends
// to a spec's text (every e2e spec has at least its sig label), leaving the
// name e2e.test --list-tests prints.
func stripLabels(name string) string {
	if i := strings.LastIndex(name, " ["); i >= 0 && strings.HasSuffix(name, "]") {
		return name[:i]
	}
	return name
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// machine describes where the run happened.
func machine() string {
	host, _ := os.Hostname()
	kernel, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("%s, %d CPUs, Linux %s", host, runtime.NumCPU(), strings.TrimSpace(string(kernel)))
}
