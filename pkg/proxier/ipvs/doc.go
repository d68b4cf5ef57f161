// Package ipvs is proxyd's IPVS backend: it renders a model.State into an
// IPVS table (one virtual server per ClusterIP, port and protocol, one real
// server per selected endpoint) plus a small nftables table for what IPVS
// cannot do itself (masquerade, hairpin, reject), and writes only the
// difference to the kernel.
//
// External traffic follows kube-proxy's IPVS mode: each external IP and
// VIP-mode load-balancer IP of a port is a virtual server bound to
// proxyd-ipvs0 like a ClusterIP, and each NodePort a virtual server on each
// of the node's addresses (State.Node.IPs) of the Service's families; their
// real servers are the port's ExternalEndpoints. With externalTrafficPolicy
// Cluster all traffic to them is masqueraded. With Local it is not, and
// only this node's endpoints are real servers; Pods (the cluster CIDR) and
// the node itself are DNATed to the ClusterIP before IPVS sees the packet,
// so they get the whole Service as in the other modes, and what is left
// for a Local virtual server without real servers is dropped (a port
// without any endpoint is refused by IPVS itself, as for a ClusterIP).
// These rules need nft_nat and nft_fib_inet besides the modules the
// ClusterIP rules use.
//
// loadBalancerSourceRanges guard a Service's load-balancer IPs only, as in
// kube-proxy (its IPVS mode's KUBE-LOAD-BALANCER-FW and
// KUBE-LOAD-BALANCER-SOURCE-CIDR ipsets): a new connection to a
// load-balancer IP and port from a source no range of that family admits
// is dropped; NodePorts, external IPs and the ClusterIP stay open, and a
// family without ranges is not guarded. When a range admits one of the
// node's addresses, the load-balancer IP itself is admitted too, since
// the node reaches an address bound to proxyd-ipvs0 from that address.
// What the ranges admit to a load-balancer IP without endpoints is refused
// by IPVS as usual.
//
// Ownership follows kube-proxy's kube-ipvs0 idea: every ClusterIP proxyd
// serves is bound to the dummy interface proxyd-ipvs0, and a virtual server
// is proxyd's only if its address is bound there (or proxyd wrote it or wants
// it). A NodePort's address is the node's own and not bound, so those
// virtual servers are owned by key instead: the ones proxyd wants, wrote,
// or recorded in the nftables table's node-servers sets (read back after a
// restart and by Cleanup). Virtual servers on any other address, and
// others on a node address, are never touched, and the IPVS-wide Flush is
// never used.
//
// The netfilter side lives in the nftables table "inet proxyd-ipvs":
//
//   - masquerade for traffic to a ClusterIP from outside the cluster CIDRs
//     (or all of it with MasqueradeAll) and for all external traffic of
//     externalTrafficPolicy Cluster, by a packet mark set before IPVS and
//     acted on in postrouting, and for hairpin traffic (a Pod reaching itself
//     through its Service);
//   - for externalTrafficPolicy Local, the DNAT of Pods and the node to the
//     ClusterIP (chain external-local) and the drop of other new
//     connections to a virtual server without local endpoints
//     (drop-input, before IPVS's LOCAL_IN hook);
//   - the drop of new connections to a load-balancer IP from outside its
//     loadBalancerSourceRanges (sets lb-guarded and lb-sources, chains
//     guard-prerouting and guard-output at priority -110: before the nat
//     chains and IPVS, for forwarded packets and the node's own);
//   - in the same chains, the drop of new connections to a ClusterIP of
//     internalTrafficPolicy Local whose family has no endpoint on this node
//     while another node has a usable one (set internal-drop): kube-proxy
//     drops them rather than refuse, so a client retries; its virtual
//     server stays, without real servers, and a port with no usable
//     endpoint anywhere is still refused by IPVS;
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
