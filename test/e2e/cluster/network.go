package cluster

import (
	"fmt"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// nodeSysctls are what a kubeadm node has (br_netfilter on, forwarding)
// and no more: conntrack and ICMP settings stay the kernel's defaults, so
// the proxies under test set what they need themselves.
var nodeSysctls = map[string]string{
	"net.ipv4.ip_forward":                  "1",
	"net.ipv6.conf.all.forwarding":         "1",
	"net.bridge.bridge-nf-call-iptables":   "1",
	"net.bridge.bridge-nf-call-ip6tables":  "1",
	"net.ipv4.conf.all.send_redirects":     "0",
	"net.ipv4.conf.default.send_redirects": "0",
}

// buildUnderlay makes the wire namespace with its bridge, moves the free
// end of the lab's node-address veth (eth0-peer) onto it, so the control
// plane is 10.88.0.2 on the underlay, and makes and wires one namespace per
// node.
func (c *Cluster) buildUnderlay(nodes int) error {
	l := c.Lab
	wire, err := l.AddNamespace("wire")
	if err != nil {
		return err
	}
	c.WireNS = wire
	if err := lab.IP(wire, "link set lo up",
		"link add "+WireBridge+" type bridge forward_delay 0", "link set "+WireBridge+" up"); err != nil {
		return err
	}
	if err := lab.IP(l.NodeNS, "link set eth0-peer netns "+wire); err != nil {
		return err
	}
	if err := lab.IP(wire, "link set eth0-peer master "+WireBridge, "link set eth0-peer up"); err != nil {
		return err
	}
	for i := 1; i <= nodes; i++ {
		ns, err := l.AddNamespace(fmt.Sprintf("node%d", i))
		if err != nil {
			return err
		}
		l.SetSysctls(ns, nodeSysctls)
		port := fmt.Sprintf("n%d", i)
		if err := lab.IP(ns, "link set lo up",
			"link add eth0 type veth peer name "+port+" netns "+wire,
			"addr add "+NodeIP(i)+"/24 dev eth0",
			"link set eth0 up",
			"route add default dev eth0"); err != nil {
			return err
		}
		if err := lab.IP(wire, "link set "+port+" master "+WireBridge, "link set "+port+" up"); err != nil {
			return err
		}
	}
	return nil
}

// routePodCIDRs routes every node's Pod CIDR to its underlay address, in
// the control plane's namespace and every other node's.
func (c *Cluster) routePodCIDRs() error {
	spaces := []string{c.Lab.NodeNS}
	for i := range c.Nodes {
		spaces = append(spaces, c.nodeNS(i+1))
	}
	for si, ns := range spaces {
		var lines []string
		for i, n := range c.Nodes {
			if si == i+1 {
				continue // a node's own CIDR is on its cni0
			}
			lines = append(lines, "route replace "+n.PodCIDR+" via "+NodeIP(i+1))
		}
		if err := lab.IP(ns, lines...); err != nil {
			return err
		}
	}
	return nil
}
