package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os/exec"
	"strings"
	"time"

	nft "github.com/google/nftables"
	"github.com/spf13/pflag"

	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/explain"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/iptables"
	"github.com/proxyd/proxyd/pkg/proxier/ipvs"
	"github.com/proxyd/proxyd/pkg/proxier/nftables"
)

// dataplaneOf is the explain view of a running backend: it reads the
// kernel on its own sockets, never through the backend's.
func dataplaneOf(b proxier.Backend) explain.Dataplane {
	switch p := b.(type) {
	case *iptables.Proxier:
		return &explain.IPTables{Variant: p.Variant(), Config: p.Config(), Counters: p.Counters}
	case *nftables.Proxier:
		return &explain.NFTables{Config: p.Config(), Families: p.Families()}
	case *ipvs.Proxier:
		return &explain.IPVS{Config: p.Config(), Scheduler: p.Scheduler()}
	}
	return nil
}

const explainUsage = `usage:
  proxyd explain --from SRC --to DST:PORT [--proto tcp|udp|sctp] [-o json]
  proxyd explain svc NAMESPACE/NAME [-o json]

Where a new connection goes, and why, from the rules the kernel holds;
with svc, how a Service's established connections spread over its
endpoints. proxyd explain asks the running daemon (--daemon, its metrics
address), which also knows what it meant to program and so reports
drift; if the daemon does not answer, it reads the kernel itself.
`

// explainMain runs `proxyd explain`; it returns the exit code.
func explainMain(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("proxyd explain", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, explainUsage); fs.PrintDefaults() }
	from := fs.String("from", "", "source address of the connection")
	to := fs.String("to", "", "destination address:port")
	proto := fs.String("proto", "tcp", "tcp, udp or sctp")
	fromNode := fs.String("from-node", "auto", "the node itself sends it (output hook): auto (when --from is a node address), true or false")
	output := fs.StringP("output", "o", "text", "text or json")
	daemon := fs.String("daemon", "http://127.0.0.1:10249", "the daemon's metrics address, where /debug/explain answers")
	local := fs.Bool("local", false, "do not ask the daemon; read the kernel here (drift is then unknown)")
	mode := fs.String("mode", "auto", "without the daemon: the mode whose rules to read (auto: the one whose rules exist)")
	variant := fs.String("iptables-backend", "auto", "without the daemon, in iptables mode: nft, legacy or auto")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "proxyd explain: -o %q: want text or json\n", *output)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out interface{ WriteText(io.Writer) error }
	var err error
	if fs.NArg() > 0 {
		if fs.Arg(0) != "svc" || fs.NArg() != 2 {
			fmt.Fprint(stderr, explainUsage)
			return 2
		}
		out, err = explainService(ctx, *daemon, fs.Arg(1))
	} else {
		if *from == "" || *to == "" {
			fmt.Fprint(stderr, explainUsage)
			return 2
		}
		out, err = explainConn(ctx, connArgs{daemon: *daemon, local: *local, mode: *mode, variant: *variant,
			from: *from, to: *to, proto: *proto, fromNode: *fromNode}, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "proxyd explain: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(out)
	} else {
		err = out.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "proxyd explain: %v\n", err)
		return 1
	}
	return 0
}

type connArgs struct {
	daemon, mode, variant, from, to, proto, fromNode string
	local                                            bool
}

func explainConn(ctx context.Context, a connArgs, stderr io.Writer) (*explain.Report, error) {
	q, err := explain.ParseQuery(a.from, a.to, a.proto, a.fromNode, explain.InterfaceAddrs())
	if err != nil {
		return nil, err
	}
	if !a.local {
		var r explain.Report
		params := url.Values{"from": {a.from}, "to": {a.to}, "proto": {a.proto}, "fromNode": {a.fromNode}}
		err := explain.Fetch(ctx, a.daemon, params, &r)
		if err == nil {
			return &r, nil
		}
		var de *explain.DaemonError
		if errors.As(err, &de) {
			return nil, err
		}
		fmt.Fprintf(stderr, "proxyd explain: the daemon at %s did not answer (%v); reading the kernel here\n", a.daemon, err)
	}
	dp, err := localDataplane(ctx, a.mode, a.variant)
	if err != nil {
		return nil, err
	}
	x := &explain.Explainer{Dataplane: dp, ReadBy: "cli"}
	if r, err := conntrack.NewReader(0); err == nil {
		defer r.Close()
		x.Conntrack = r
	}
	return x.Explain(ctx, q)
}

func explainService(ctx context.Context, daemon, name string) (*explain.ServiceReport, error) {
	if _, err := explain.ParseService(name); err != nil {
		return nil, err
	}
	var r explain.ServiceReport
	if err := explain.Fetch(ctx, daemon, url.Values{"svc": {name}}, &r); err != nil {
		var de *explain.DaemonError
		if errors.As(err, &de) {
			return nil, err
		}
		return nil, fmt.Errorf("the per-endpoint spread comes from the daemon's connection-balance collector, and the daemon at %s did not answer: %w", daemon, err)
	}
	return &r, nil
}

// localDataplane finds the mode whose rules this node holds, unless mode
// names it.
func localDataplane(ctx context.Context, mode, variant string) (explain.Dataplane, error) {
	if mode == "auto" {
		var err error
		if mode, variant, err = detectMode(ctx, variant); err != nil {
			return nil, err
		}
	}
	switch mode {
	case "iptables":
		if variant == "auto" {
			v, found := iptablesWithRules(ctx)
			if !found {
				return nil, errors.New("no proxyd chain in iptables-nft-save or iptables-legacy-save output")
			}
			variant = string(v)
		}
		if variant != string(iptables.VariantNFT) && variant != string(iptables.VariantLegacy) {
			return nil, fmt.Errorf("--iptables-backend %q: want nft, legacy or auto", variant)
		}
		return &explain.IPTables{Variant: iptables.Variant(variant)}, nil
	case "nftables":
		return &explain.NFTables{}, nil
	case "ipvs":
		return &explain.IPVS{}, nil
	}
	return nil, fmt.Errorf("--mode %q: want auto, %s", mode, strings.Join(Modes, ", "))
}

// detectMode says which mode's rules exist: proxyd's nftables tables,
// IPVS mode's, or its iptables chains.
func detectMode(ctx context.Context, variant string) (string, string, error) {
	if c, err := nft.New(); err == nil {
		if tables, err := c.ListTables(); err == nil {
			for _, t := range tables {
				switch t.Name {
				case nftables.TableName:
					return "nftables", variant, nil
				case ipvs.TableName:
					return "ipvs", variant, nil
				}
			}
		}
	}
	if v, found := iptablesWithRules(ctx); found {
		return "iptables", string(v), nil
	}
	return "", "", errors.New("no proxyd rules found on this node (nftables table, IPVS table or iptables chains); is proxyd running here?")
}

// iptablesWithRules returns the variant whose nat table has proxyd's
// dispatch chain.
func iptablesWithRules(ctx context.Context) (iptables.Variant, bool) {
	for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
		for _, save := range []string{iptables.DefaultBinaries(v).Save, iptables.DefaultBinaries(v).Save6} {
			out, err := exec.CommandContext(ctx, save, "-t", "nat").Output()
			if err == nil && strings.Contains(string(out), ":"+iptables.ChainServices+" ") {
				return v, true
			}
		}
	}
	return "", false
}
