package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"strconv"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
)

// The tables proxyd writes to.
const (
	tableNAT    = "nat"
	tableFilter = "filter"
)

// Chains proxyd owns. Every chain whose name starts with chainPrefix is
// proxyd's and nothing else is.
const (
	chainPrefix = "PROXYD-"
	// ChainServices dispatches ClusterIP traffic, in nat to the service
	// port's chain and in filter to a REJECT when it has no endpoints.
	ChainServices = "PROXYD-SERVICES"
	// ChainPostrouting masquerades the packets that carry the mark.
	ChainPostrouting = "PROXYD-POSTROUTING"
	// ChainMarkMasq sets the masquerade mark.
	ChainMarkMasq = "PROXYD-MARK-MASQ"
	// ChainMarkDrop sets the drop mark, which filter's
	// PROXYD-EXTERNAL-SERVICES drops: nat may not drop.
	ChainMarkDrop = "PROXYD-MARK-DROP"

	// ChainNodePorts (nat) dispatches traffic to a local address by
	// NodePort to the service port's external chain; it is jumped to from
	// the end of PROXYD-SERVICES.
	ChainNodePorts = "PROXYD-NODEPORTS"
	// ChainExternalServices (filter) refuses new connections to the
	// NodePorts and external IPs of service ports without endpoints, and
	// drops external traffic to externalTrafficPolicy Local ports without
	// a local endpoint.
	ChainExternalServices = "PROXYD-EXTERNAL-SERVICES"
	// ChainForward (filter), first in FORWARD, drops what a firewall chain
	// marked and INVALID packets, and accepts what proxyd masquerades and
	// the connections it let through, so a FORWARD policy of DROP does
	// not cut Services off (kube-proxy's KUBE-FORWARD).
	ChainForward = "PROXYD-FORWARD"

	svcChainPrefix = "PROXYD-SVC-"
	svlChainPrefix = "PROXYD-SVL-"
	svxChainPrefix = "PROXYD-SVX-"
	extChainPrefix = "PROXYD-EXT-"
	fwChainPrefix  = "PROXYD-FW-"
	sepChainPrefix = "PROXYD-SEP-"
)

// hashLen is how many base32 characters of the SHA-256 a per-object chain
// name carries: 11 + 16 = 27 characters, under iptables' limit of 28.
const hashLen = 16

// chainName is prefix plus the first hashLen characters of
// base32(sha256(parts...)).
func chainName(prefix string, parts ...string) string {
	var in [256]byte
	b := in[:0]
	for _, p := range parts {
		b = append(b, p...)
	}
	sum := sha256.Sum256(b)
	var enc [56]byte // base32 of 32 bytes
	base32.StdEncoding.Encode(enc[:], sum[:])
	out := make([]byte, 0, len(prefix)+hashLen)
	out = append(out, prefix...)
	out = append(out, enc[:hashLen]...)
	return string(out)
}

// svcChain is the chain of one service port: the choice among its
// endpoints.
func svcChain(k model.ServicePortKey) string {
	return chainName(svcChainPrefix, k.String(), k.Protocol.Lower())
}

// fwChain is the chain that admits only loadBalancerSourceRanges to the
// load-balancer IPs of one service port.
func fwChain(k model.ServicePortKey) string {
	return chainName(fwChainPrefix, k.String(), k.Protocol.Lower())
}

// extChain is the chain NodePort and external-IP traffic of one service
// port takes: the externalTrafficPolicy decision.
func extChain(k model.ServicePortKey) string {
	return chainName(extChainPrefix, k.String(), k.Protocol.Lower())
}

// svlChain is the choice among the endpoints external traffic may use
// when they are not those of the service chain (externalTrafficPolicy
// Local: this node's own).
func svlChain(k model.ServicePortKey) string {
	return chainName(svlChainPrefix, k.String(), k.Protocol.Lower())
}

// svxChain is the choice short-circuited traffic (the node's own and its
// Pods', to an externalTrafficPolicy Local port) makes when it is neither
// the service chain's nor svlChain's: with internalTrafficPolicy Local
// too, the service chain has only this node's endpoints, and the short
// circuit uses the whole Service's.
func svxChain(k model.ServicePortKey) string {
	return chainName(svxChainPrefix, k.String(), k.Protocol.Lower())
}

// sepChain is the chain of one endpoint of one service port: the DNAT.
func sepChain(k model.ServicePortKey, e model.Endpoint) string {
	return chainName(sepChainPrefix, k.String(), k.Protocol.Lower(), e.String())
}

// portName is the service port as kube-proxy names it in comments:
// "namespace/name:port", or "namespace/name" for an unnamed port.
func portName(k model.ServicePortKey) string {
	s := k.Namespace + "/" + k.Name
	if k.Port != "" {
		s += ":" + k.Port
	}
	return s
}

// maxComment is the comment match's limit (XT_MAX_COMMENT_LEN - 1).
const maxComment = 255

// quoteComment returns s as one restore-file word: quoted, with anything
// that could break the line or the quoting replaced, and cut to the comment
// match's limit. Names from the apiserver are DNS labels, so this only
// matters for input that bypassed validation.
func quoteComment(s string) string {
	if len(s) > maxComment {
		s = s[:maxComment]
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if !commentSafe(s[i]) {
			clean = false
			break
		}
	}
	if !clean {
		b := []byte(s)
		for i, c := range b {
			if !commentSafe(c) {
				b[i] = '_'
			}
		}
		s = string(b)
	}
	return `"` + s + `"`
}

func commentSafe(c byte) bool {
	return c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '\''
}

// probability is 1/n formatted the way kube-proxy formats it, which is also
// what iptables parses back without surprises.
func probability(n int) string {
	return strconv.FormatFloat(1/float64(n), 'f', 10, 64)
}

// markString is a mark value as kube-proxy spells it ("0x004000").
func markString(m uint32) string {
	s := strconv.FormatUint(uint64(m), 16)
	if len(s) < 6 {
		s = strings.Repeat("0", 6-len(s)) + s
	}
	return "0x" + s
}
