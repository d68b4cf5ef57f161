// Package iptables is proxyd's iptables backend: it renders a model.State
// into iptables-restore text shaped like kube-proxy's iptables mode (a
// dispatch chain, a chain per service port and per endpoint, statistic
// matches for the random choice, a mark bit that requests masquerade) but
// with proxyd's own names (PROXYD-*), and applies it with one
// iptables-restore --noflush per family per sync. The filter table rejects
// new connections to a Service without endpoints and, since nat has
// already DNATed every valid one, anything else still addressed to a
// ServiceCIDR (one rule per range) or to a ClusterIP outside them.
//
// The package has four parts:
//   - render.go: the pure renderer, State + Config + family → restore text;
//   - proxier.go and plan.go: the Backend, which remembers what it last
//     wrote and rewrites only the chains of service ports that changed,
//     falling back to a full write on the first sync, after an error, when
//     asked, and periodically;
//   - tables.go and parse.go: a small in-memory model of iptables tables
//     that applies restore text the way the kernel does (references are
//     checked, the batch is all or nothing); the unit tests' fake kernel and
//     the Tracer are built on it;
//   - trace.go: a flowspec.Tracer that evaluates rendered (or iptables-save)
//     text for one packet.
//
// Only chains named PROXYD-* and the jump rules into them from the built-in
// chains are ever written or deleted.
package iptables
