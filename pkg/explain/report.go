// Package explain answers "where does a new connection from this source to
// this destination go, and why?" from the rules the kernel holds — read
// back from it, not from proxyd's own rendering — and "how are this
// Service's connections spread?" from the connection-balance collector.
//
// Each dataplane plugs in through Dataplane: it reads its rules from the
// kernel and enumerates every way they can treat the packet, with exact
// probabilities and the rules on the way. The Explainer adds what is the
// same in every mode: the Service the daemon's model says owns the
// destination, the masquerade verdict and its reason, the established
// conntrack entries, and drift between the kernel and proxyd's intent.
package explain

import (
	"net/netip"
	"time"

	"github.com/proxyd/proxyd/pkg/balance"
	"github.com/proxyd/proxyd/pkg/model"
)

// Query is the question: the first packet of a new connection.
type Query struct {
	Src   netip.Addr     `json:"from"`
	Dst   netip.AddrPort `json:"to"`
	Proto model.Protocol `json:"protocol"`
	// FromNode: the node itself sends the packet (the output hook), which
	// is what happens when Src is one of the node's addresses.
	FromNode bool `json:"fromNode"`
}

// Report is the answer to a Query.
type Report struct {
	Query Query `json:"query"`
	// Dataplane is the mode whose rules were read, e.g. "iptables-nft".
	Dataplane string `json:"dataplane"`
	// ReadBy says who read the kernel: "daemon" (proxyd's /debug/explain,
	// which also knows what proxyd means to program) or "cli".
	ReadBy string    `json:"readBy"`
	At     time.Time `json:"at"`
	// Verdict sums up the outcomes: dnat, reject, drop, untouched, or
	// mixed when they differ.
	Verdict string `json:"verdict"`
	// Service is the Service and port the rules sent the packet to, and
	// MatchedBy the rule that chose it.
	Service   *ServiceRef `json:"service,omitempty"`
	MatchedBy *Step       `json:"matchedBy,omitempty"`
	// Model is what proxyd's model says owns the destination (daemon only).
	Model      *ServiceRef `json:"model,omitempty"`
	Masquerade Masquerade  `json:"masquerade"`
	Outcomes   []Outcome   `json:"outcomes"`
	Scheduler  *Scheduler  `json:"scheduler,omitempty"`
	Affinity   []Affinity  `json:"affinity"`
	Conntrack  []Conn      `json:"conntrack"`
	// ConntrackOther counts the entries between client and destination
	// that are not established (closing, unanswered).
	ConntrackOther int      `json:"conntrackOther"`
	Drift          Drift    `json:"drift"`
	Notes          []string `json:"notes,omitempty"`
}

// ServiceRef names one port of a Service and how the packet reached it.
type ServiceRef struct {
	Namespace string         `json:"namespace"`
	Name      string         `json:"name"`
	Port      string         `json:"port"`
	Protocol  model.Protocol `json:"protocol"`
	// Kind is how the destination belongs to it: "ClusterIP", "NodePort",
	// "external IP" or "load-balancer IP".
	Kind string `json:"kind,omitempty"`
}

// Step is one rule on a packet's path, as the kernel lists it.
type Step struct {
	// Hook is where it ran (nftables and IPVS); iptables names its
	// built-in chains after the hooks.
	Hook  string `json:"hook,omitempty"`
	Table string `json:"table,omitempty"`
	Chain string `json:"chain"`
	Rule  string `json:"rule"`
}

// Outcome is one thing the rules can do with the packet.
type Outcome struct {
	// Verdict is dnat, reject, drop or untouched.
	Verdict  string         `json:"verdict"`
	Endpoint netip.AddrPort `json:"endpoint,omitzero"`
	// Probability is exact: computed from the rules' random matches, not
	// sampled.
	Probability float64 `json:"probability"`
	Masquerade  bool    `json:"masquerade"`
	// MasqueradeWhy says which rule masquerades it, and why it applies.
	MasqueradeWhy string `json:"masqueradeWhy,omitempty"`
	Path          []Step `json:"path"`
}

// Masquerade is the verdict over all outcomes.
type Masquerade struct {
	// Decision is "yes", "no" or "for some endpoints" (hairpin).
	Decision string   `json:"decision"`
	Why      []string `json:"why"`
}

// Scheduler is IPVS's choice instead of random matches.
type Scheduler struct {
	// VirtualServer is the IPVS service that scheduled, as ipvsadm
	// names it ("TCP 10.96.0.60:80").
	VirtualServer string `json:"virtualServer"`
	Name          string `json:"name"`
	// Does says how the scheduler chooses, and what the outcomes'
	// probabilities then mean.
	Does    string         `json:"does"`
	Weights map[string]int `json:"weights"`
	// Persistence is the persistence timeout (0: none).
	Persistence time.Duration `json:"persistence,omitempty"`
}

// Affinity is a session-affinity entry the kernel holds for the client.
type Affinity struct {
	Client   netip.Addr     `json:"client"`
	Endpoint netip.AddrPort `json:"endpoint"`
	// Where the kernel keeps it, e.g. "xt_recent list PROXYD-SEP-…".
	Where string `json:"where"`
	// Age is how long ago the client was last sent there, when known.
	Age      time.Duration `json:"age,omitempty"`
	AgeKnown bool          `json:"ageKnown"`
	Timeout  time.Duration `json:"timeout"`
	// Expires is the time the entry has left, when the kernel says so.
	Expires time.Duration `json:"expires,omitempty"`
	// Active: within its timeout, so new connections follow it.
	Active bool `json:"active"`
}

// Conn is one conntrack entry between the client and the destination.
type Conn struct {
	Proto  string         `json:"proto"`
	State  string         `json:"state,omitempty"`
	Client netip.AddrPort `json:"client"`
	Dst    netip.AddrPort `json:"dst"`
	// Endpoint is who answers (the DNAT target); ReplyTo is where the
	// answer is sent, which is not the client when it was masqueraded.
	Endpoint netip.AddrPort `json:"endpoint"`
	ReplyTo  netip.AddrPort `json:"replyTo"`
	Timeout  time.Duration  `json:"timeout"`
}

// Drift is how the kernel's rules differ from what proxyd programmed.
type Drift struct {
	// Known is false when nobody could compare (the CLI without the
	// daemon); Why then says so.
	Known       bool     `json:"known"`
	Why         string   `json:"why,omitempty"`
	Differences []string `json:"differences,omitempty"`
}

// ServiceReport is the answer to "explain svc NAMESPACE/NAME".
type ServiceReport struct {
	Service model.NamespacedName `json:"service"`
	ReadBy  string               `json:"readBy"`
	// At is when the conntrack table was walked; Interval how often.
	At     time.Time      `json:"at"`
	Spread balance.Spread `json:"spread"`
	// Ports are the Service's ports with their destinations, as
	// programmed.
	Ports []string `json:"ports"`
	Notes []string `json:"notes,omitempty"`
}
