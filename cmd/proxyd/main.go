// Command proxyd is a node dataplane daemon that does kube-proxy's job: it
// watches Services and EndpointSlices and programs per-connection
// VIP→Pod DNAT into the kernel with nftables, iptables or IPVS.
package main

import (
	"os"

	"github.com/proxyd/proxyd/cmd/proxyd/app"
)

func main() { os.Exit(app.Main(os.Args[1:])) }
