package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// serviceIPs is the verdict map both proxies dispatch ClusterIPs with.
const serviceIPs = "service-ips"

// nftView reads nftables over netlink, in the node netns.
type nftView struct {
	table     *nftables.Table
	svcPrefix string
	nsFile    *os.File
	mu        sync.Mutex
	conn      *nftables.Conn
	raw       *netlink.Conn // for one element at a time, which google/nftables cannot ask for
}

// newNFTView opens netlink connections to nf_tables in netns ns.
func newNFTView(ns, table, svcPrefix string) (*nftView, error) {
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, err
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nftables netlink in %s: %w", ns, err)
	}
	raw, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		_ = c.CloseLasting()
		f.Close()
		return nil, fmt.Errorf("netfilter netlink in %s: %w", ns, err)
	}
	return &nftView{table: &nftables.Table{Name: table, Family: nftables.TableFamilyIPv4},
		svcPrefix: svcPrefix, nsFile: f, conn: c, raw: raw}, nil
}

func (v *nftView) how() string {
	return "netlink (google/nftables): per poll, the port's service-ips element (proxyd) or its chain (kube-proxy)"
}

func (v *nftView) close() {
	_ = v.conn.CloseLasting()
	_ = v.raw.Close()
	_ = v.nsFile.Close()
}

func (v *nftView) programmed(_ context.Context, ips map[[4]byte]bool) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	set, err := v.conn.GetSetByName(v.table, serviceIPs)
	if err != nil {
		return 0, nil // no table or map yet
	}
	elems, err := v.conn.GetSetElements(set)
	if err != nil {
		return 0, nil
	}
	n := 0
	for _, e := range elems {
		if len(e.Key) >= 4 && ips[[4]byte(e.Key[:4])] {
			n++
		}
	}
	return n, nil
}

var (
	// nftSvcChain finds the bench Service in a per-port chain's name
	// (proxyd's svc-, kube-proxy's service-<hash>-).
	nftSvcChain = regexp.MustCompile(`(?:^|-)` + benchNS + `/(bench-\d+)/tcp/`)
	// nftPortComment finds it in the comment of proxyd's service-ips element.
	nftPortComment = regexp.MustCompile(`^` + benchNS + `/(bench-\d+)/tcp/`)
	// pickChain is proxyd's chain shared by every port of n endpoints.
	pickChain = regexp.MustCompile(`^pick-[a-z]+-(\d+)$`)
)

// ports finds every bench Service: by its own chain's name where it has
// one (kube-proxy; proxyd before its shared pick chains), and by the
// comment of its service-ips element (proxyd), whose verdict then names
// the chain that picks its endpoint.
func (v *nftView) ports(_ context.Context) (map[string]portRef, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	all, err := v.conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, err
	}
	out := map[string]portRef{}
	for _, c := range all {
		if c.Table.Name != v.table.Name || !strings.HasPrefix(c.Name, v.svcPrefix) {
			continue
		}
		if m := nftSvcChain.FindStringSubmatch(c.Name); m != nil {
			out[m[1]] = portRef{chain: c.Name}
		}
	}
	set, err := v.conn.GetSetByName(v.table, serviceIPs)
	if err != nil {
		return out, nil
	}
	elems, err := v.conn.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("elements of %s: %w", serviceIPs, err)
	}
	for _, e := range elems {
		if m := nftPortComment.FindStringSubmatch(e.Comment); m != nil {
			out[m[1]] = portRef{key: e.Key}
		}
	}
	return out, nil
}

// endpoints reads how many endpoints the port picks from: N of a pick
// chain pick-<proto>-N, else the numgen modulus of its chain (an anonymous
// verdict map or a DNAT map indexed by it, or numgen-guarded rules), else
// the chain's DNAT rules.
func (v *nftView) endpoints(_ context.Context, p portRef) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	chain := p.chain
	if p.key != nil {
		c, err := v.elementChain(serviceIPs, p.key)
		if err != nil {
			return -1, err
		}
		if m := pickChain.FindStringSubmatch(c); m != nil {
			return strconv.Atoi(m[1])
		}
		chain = c
	}
	rules, err := v.conn.GetRules(v.table, &nftables.Chain{Name: chain, Table: v.table})
	if err != nil {
		return -1, err
	}
	mod, nat := 0, 0
	for _, r := range rules {
		for _, e := range r.Exprs {
			switch x := e.(type) {
			case *expr.Numgen:
				mod = max(mod, int(x.Modulus))
			case *expr.NAT:
				if x.Type == expr.NATTypeDestNAT {
					nat++
				}
			}
		}
	}
	if mod > 0 {
		return mod, nil
	}
	return nat, nil
}

// elementChain asks the kernel for the one element of a verdict map with
// key (NFT_MSG_GETSETELEM without a dump, as `nft get element` does) and
// returns the chain its verdict jumps or goes to. The caller holds v.mu.
func (v *nftView) elementChain(set string, key []byte) (string, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, v.table.Name)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(l *netlink.AttributeEncoder) error {
		l.Nested(unix.NFTA_LIST_ELEM, func(e *netlink.AttributeEncoder) error {
			e.Nested(unix.NFTA_SET_ELEM_KEY, func(k *netlink.AttributeEncoder) error {
				k.Bytes(unix.NFTA_DATA_VALUE, key)
				return nil
			})
			return nil
		})
		return nil
	})
	data, err := ae.Encode()
	if err != nil {
		return "", err
	}
	msgs, err := v.raw.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request},
		// nfgenmsg: family, version, resource id
		Data: append([]byte{unix.NFPROTO_IPV4, unix.NFNETLINK_V0, 0, 0}, data...),
	})
	if err != nil {
		return "", fmt.Errorf("get element of %s: %w", set, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		if c, err := verdictChain(m.Data[4:]); err != nil || c != "" {
			return c, err
		}
	}
	return "", fmt.Errorf("get element of %s: no verdict with a chain in the answer", set)
}

// verdictChain digs the chain name out of a NEWSETELEM message's
// attributes: elements, element, data, verdict, chain.
func verdictChain(b []byte) (string, error) {
	var chain string
	path := []uint16{unix.NFTA_SET_ELEM_LIST_ELEMENTS, unix.NFTA_LIST_ELEM, unix.NFTA_SET_ELEM_DATA, unix.NFTA_DATA_VERDICT}
	var walk func(ad *netlink.AttributeDecoder, depth int) error
	walk = func(ad *netlink.AttributeDecoder, depth int) error {
		for ad.Next() {
			switch {
			case depth < len(path) && ad.Type() == path[depth]:
				ad.Nested(func(nad *netlink.AttributeDecoder) error { return walk(nad, depth+1) })
			case depth == len(path) && ad.Type() == unix.NFTA_VERDICT_CHAIN:
				chain = ad.String()
			}
		}
		return ad.Err()
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", err
	}
	return chain, walk(ad, 0)
}
