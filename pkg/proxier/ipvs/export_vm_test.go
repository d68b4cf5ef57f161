//go:build ipvsvm

package ipvs

// The VM's namespaces and servers, for the VM tests of package ipvs_test,
// which use proxyd explain (a package that imports this one).
var (
	VMPeer   = peer
	VMClient = client
	VMInNS   = inNS
	VMServe  = serve
)
