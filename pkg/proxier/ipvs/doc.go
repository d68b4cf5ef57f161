// Package ipvs is proxyd's IPVS backend: it renders a model.State into an
// IPVS table (one virtual server per ClusterIP, port and protocol, one real
// server per selected endpoint) plus a small nftables table for what IPVS
// cannot do itself (masquerade, hairpin, reject), and writes only the
// difference to the kernel.
//
// Ownership follows kube-proxy's kube-ipvs0 idea: every ClusterIP proxyd
// serves is bound to the dummy interface proxyd-ipvs0, and a virtual server
// is proxyd's only if its address is bound there (or proxyd wrote it or wants
// it). Virtual servers on any other address are never touched, and the
// IPVS-wide Flush is never used.
//
// The netfilter side lives in the nftables table "inet proxyd-ipvs":
//
//   - masquerade for traffic to a ClusterIP from outside the cluster CIDRs
//     (or all of it with MasqueradeAll), by a packet mark set before IPVS and
//     acted on in postrouting, and for hairpin traffic (a Pod reaching itself
//     through its Service);
//   - reject (ICMP port unreachable) for new connections IPVS did not take:
//     to a ClusterIP on a port or protocol it has no virtual server for
//     (the address is local, so the node's own sockets would answer), and to
//     an address of the service ranges that is no ClusterIP.
//
// A virtual server without real servers (or with only draining, weight-0
// ones) needs no rule: IPVS itself answers a new connection to it with ICMP
// port unreachable, persistent or not, forwarded or from the node — the VM
// test shows it on a real kernel, with a listener on the VIP that would
// accept anything IPVS let through. kube-proxy's IPVS mode relies on the
// same behaviour.
//
// Removed TCP endpoints are drained: their real server gets weight 0 and is
// deleted once IPVS counts no connection on it, or after a grace period.
// UDP and SCTP real servers are deleted at once, as kube-proxy does; the
// conntrack side consumer forgets their flows.
package ipvs
