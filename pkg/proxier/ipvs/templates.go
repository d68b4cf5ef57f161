package ipvs

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// ConnTable is where the kernel lists IPVS's connections, persistence
// templates included, for the network namespace of the reading thread:
// /proc/net is the thread group leader's, which in a Go program that
// has entered other namespaces on locked threads may be one of those.
const ConnTable = "/proc/thread-self/net/ip_vs_conn"

// Template is a persistence template IPVS holds: until it expires, new
// connections from Client to the virtual server VS go to RealServer (as
// long as that still has a weight above 0; otherwise, with
// expire_quiescent_template, IPVS drops the template and schedules anew).
type Template struct {
	VS         VSKey
	Client     netip.Addr
	RealServer netip.AddrPort
	// Expires is the time the template has left; IPVS extends it while
	// connections it placed are open.
	Expires time.Duration
	// State is NONE or ASSURED.
	State string
}

// ReadTemplates reads the persistence templates from IPVS's connection
// table at path (ConnTable when ""): the entries without a client port
// in one of the template states. IPVS prints templates among the
// connections, with client port 0 (persistence groups a client's
// connections whatever their ports), and a template state.
func ReadTemplates(path string) ([]Template, error) {
	if path == "" {
		path = ConnTable
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out, err := parseTemplates(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// parseTemplates reads the lines ip_vs_conn_seq_show prints:
//
//	Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
//	TCP 0AF40164 0000 0A60003D 0050 0AF4010C 1F90 NONE          10799
//
// IPv4 addresses are 8 hex digits, IPv6 ones written out in full; ports
// are hex; Expires is in seconds.
func parseTemplates(r io.Reader) ([]Template, error) {
	var out []Template
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if line == 1 && len(f) > 0 && f[0] == "Pro" {
			continue
		}
		if len(f) < 9 {
			return nil, fmt.Errorf("line %d: %d fields, want at least 9: %q", line, len(f), sc.Text())
		}
		if f[2] != "0000" || (f[7] != "NONE" && f[7] != "ASSURED") {
			continue // a connection, not a template
		}
		proto, ok := model.ProtocolOf(protoNumberByName[f[0]])
		if !ok {
			continue // a fwmark service's template (IP) or another protocol
		}
		client, err1 := connAddr(f[1])
		vaddr, err2 := connAddr(f[3])
		vport, err3 := strconv.ParseUint(f[4], 16, 16)
		daddr, err4 := connAddr(f[5])
		dport, err5 := strconv.ParseUint(f[6], 16, 16)
		expires, err6 := strconv.ParseUint(f[8], 10, 32)
		for _, err := range []error{err1, err2, err3, err4, err5, err6} {
			if err != nil {
				return nil, fmt.Errorf("line %d: %w: %q", line, err, sc.Text())
			}
		}
		out = append(out, Template{VS: VSKey{Addr: vaddr, Protocol: proto, Port: uint16(vport)}, Client: client,
			RealServer: netip.AddrPortFrom(daddr, uint16(dport)), Expires: time.Duration(expires) * time.Second, State: f[7]})
	}
	return out, sc.Err()
}

var protoNumberByName = map[string]uint8{"TCP": 6, "UDP": 17, "SCTP": 132}

// connAddr reads an address as ip_vs_conn prints it: IPv4 as the 8 hex
// digits of its 32-bit value (10.244.1.100 is 0AF40164), IPv6 in full.
func connAddr(s string) (netip.Addr, error) {
	if len(s) == 8 && !strings.Contains(s, ":") {
		b, err := hex.DecodeString(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("address %q: %w", s, err)
		}
		return netip.AddrFrom4([4]byte(b)), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("address %q: %w", s, err)
	}
	return a.Unmap(), nil
}
