// Package informer is proxyd's edge to the apiserver: it watches Services,
// EndpointSlices and the node proxyd runs on, converts each object once into
// the plain types of pkg/model (package convert drops everything proxyd must
// ignore, and the informer reports it), and tells a Handler when a converted
// value actually changed.
//
// Each watch is a client-go reflector that writes into the informer's own
// store of converted values (watch.go): no client-go cache holds the API
// objects. HoldDuringOutages keeps the reflectors from backing off while the
// apiserver is unreachable, so changes flow as soon as it answers again.
//
// Filtering happens here and nowhere else. Server-side label selectors keep
// headless Services and other proxies' objects off the wire, exactly as
// kube-proxy's do; the same rules are applied again client-side in the
// conversion functions, so an apiserver (or a fake) that ignores selectors
// cannot leak an object past this package.
//
// # Objects labelled for this proxy
//
// kube-proxy ignores every object carrying the label
// service.kubernetes.io/service-proxy-name. proxyd can be given a ProxyName
// and then also handles the objects whose label names it. A label selector
// cannot say "label absent OR label = ProxyName", so with a ProxyName each
// resource is watched by two informers, one per selector:
//
//	!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name
//	!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name=<ProxyName>
//
// The alternative, one informer without the proxy-name requirement plus a
// client-side filter, would make every node list and watch the objects of
// every other proxy in the cluster. Two watches per resource cost one extra
// connection and keep the server-side filtering exact.
//
// An object whose label changes moves from one informer to the other, and the
// two informers' events are not ordered with respect to each other. Each
// informer therefore keeps its own map of converted objects; the value an
// object name has is the one from the most recent event of either informer,
// falling back to the other informer's entry when one deletes it. Whatever the
// interleaving, once both informers have seen the change the view is right.
package informer
