// Command coredns is the cluster lab's DNS server: CoreDNS v1.15.0 with only
// the plugins a kube-dns Corefile without upstream forwarding uses (errors,
// log, health, ready, loadbalance, cache, kubernetes). Leaving out the other
// ~50 plugins (cloud DNS providers, etcd, dnstap, …) keeps the build at about
// a minute and a half on two cores.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// CoreDNS orders plugins by this list (upstream's zdirectives.go order);
	// a directive not in it is a Corefile error.
	dnsserver.Directives = []string{"ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes"}
}

func main() { coremain.Run() }
