// Package iptables is proxyd's iptables backend: it renders a model.State
// into iptables-restore text shaped like kube-proxy's iptables mode (a
// dispatch chain, a chain per service port and per endpoint that may be
// the source of its own connection — see picker.direct —, statistic
// matches for the random choice, a mark bit that requests masquerade) but
// with proxyd's own names (PROXYD-*), and applies it with one
// iptables-restore --noflush per family per sync. The filter table rejects
// new connections to a Service without endpoints and, since nat has
// already DNATed every valid one, anything else still addressed to a
// ServiceCIDR (one rule per range) or to a ClusterIP outside them.
//
// External traffic takes kube-proxy's shape too. A service port with a
// NodePort or external IPs has a PROXYD-EXT-* chain: its external IPs jump
// there from PROXYD-SERVICES, its NodePort from PROXYD-NODEPORTS, which
// the end of PROXYD-SERVICES enters for destinations of type LOCAL (except
// loopback, unless Config.LocalhostNodePorts: then IPv4 NodePorts answer
// on 127.0.0.1 as well, with route_localnet set, as kube-proxy's
// default). With externalTrafficPolicy Cluster the external chain marks
// the packet for masquerade and goes on to the service chain; with Local
// it short-circuits Pods (the cluster CIDR) and the node itself
// (masqueraded) to the whole Service — the service chain, or a
// PROXYD-SVX-* choice when internalTrafficPolicy Local narrows that one —
// and sends everything else to a PROXYD-SVL-* choice among this node's
// endpoints. Filter's PROXYD-EXTERNAL-SERVICES, entered from INPUT,
// FORWARD and OUTPUT for new connections, rejects the NodePorts and
// external IPs of ports no node serves and drops external traffic to
// Local ports without a local endpoint. These decisions are pkg/model's
// (ServicePort.ExternalRefuses, ExternalDrops, ShortCircuits, ...); the
// renderer only spells them.
//
// The package has four parts:
//   - render.go and servicechains.go: the pure renderer, State + Config +
//     family → restore text, as chains and each service port's part of the
//     shared chains;
//   - proxier.go and plan.go: the Backend, which remembers what it last
//     wrote as rendered text (a digest per chain, each port's part of the
//     shared chains) and writes exactly the chains whose text differs,
//     rendering only the service ports whose State pointer changed;
//     it falls back to a full write on the first sync, after an error,
//     when asked, and periodically;
//   - drift.go and contain.go: each sync reads a size-independent mark of
//     the tables and, only when someone else moved it, compares them with
//     what was written and rewrites what drifted; a write the kernel
//     refuses is narrowed to the service ports responsible, which are left
//     out while everything else is programmed;
//   - tables.go and parse.go: a small in-memory model of iptables tables
//     that applies restore text the way the kernel does (references are
//     checked, the batch is all or nothing); the unit tests' fake kernel and
//     the Tracer are built on it;
//   - trace.go and tracematch.go: a flowspec.Tracer that evaluates
//     rendered (or iptables-save) text for one packet and fails on any
//     match, option or target it does not model.
//
// Only chains named PROXYD-* and the jump rules into them from the built-in
// chains are ever written or deleted.
package iptables
