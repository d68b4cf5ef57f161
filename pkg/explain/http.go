package explain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// ParseQuery reads a query as the CLI and /debug/explain take it: from an
// address, to address:port, a protocol (default tcp). FromNode is set when
// local says the source is the node's own, unless fromNode forces it.
func ParseQuery(from, to, proto string, fromNode string, local func(netip.Addr) bool) (Query, error) {
	var q Query
	src, err := netip.ParseAddr(strings.TrimSpace(from))
	if err != nil {
		return q, fmt.Errorf("--from %q: want an IP address", from)
	}
	dst, err := netip.ParseAddrPort(strings.TrimSpace(to))
	if err != nil {
		return q, fmt.Errorf("--to %q: want IP:PORT ([IPv6]:PORT)", to)
	}
	if proto == "" {
		proto = "tcp"
	}
	q = Query{Src: src.Unmap(), Dst: dst, Proto: model.Protocol(strings.ToUpper(proto))}
	if !q.Proto.Valid() {
		return q, fmt.Errorf("--proto %q: want tcp, udp or sctp", proto)
	}
	switch fromNode {
	case "true":
		q.FromNode = true
	case "false":
	case "", "auto":
		q.FromNode = local != nil && local(q.Src)
	default:
		return q, fmt.Errorf("from-node %q: want true, false or auto", fromNode)
	}
	return q, nil
}

// ParseService reads NAMESPACE/NAME.
func ParseService(s string) (model.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return model.NamespacedName{}, fmt.Errorf("%q: want NAMESPACE/NAME", s)
	}
	return model.NamespacedName{Namespace: ns, Name: name}, nil
}

// Handler serves /debug/explain from the daemon: ?from=&to=&proto=[&fromNode=]
// explains a connection, ?svc=NAMESPACE/NAME a Service's spread; the
// answer is text unless ?o=json. Requests are answered one at a time:
// each reads the kernel's rules and walks the conntrack table.
func Handler(x *Explainer) http.Handler {
	var mu sync.Mutex
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		v := req.URL.Query()
		asJSON := v.Get("o") == "json"
		ctx, cancel := context.WithTimeout(req.Context(), 30*time.Second)
		defer cancel()
		mu.Lock()
		defer mu.Unlock()
		var out interface {
			WriteText(io.Writer) error
		}
		if svc := v.Get("svc"); svc != "" {
			name, err := ParseService(svc)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r, err := x.Service(name)
			if err != nil {
				code := http.StatusServiceUnavailable
				if errors.Is(err, ErrNotFound) {
					code = http.StatusNotFound
				}
				http.Error(w, err.Error(), code)
				return
			}
			out = r
		} else {
			q, err := ParseQuery(v.Get("from"), v.Get("to"), v.Get("proto"), v.Get("fromNode"), InterfaceAddrs())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r, err := x.Explain(ctx, q)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			out = r
		}
		if asJSON {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(out)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_ = out.WriteText(w)
	})
}

// Fetch asks a daemon's /debug/explain at base (http://host:port) with
// params and decodes its JSON answer into out.
func Fetch(ctx context.Context, base string, params url.Values, out any) error {
	params.Set("o", "json")
	u := strings.TrimSuffix(base, "/") + "/debug/explain?" + params.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &DaemonError{Code: resp.StatusCode, Msg: strings.TrimSpace(string(body))}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode the daemon's answer: %w", err)
	}
	return nil
}

// DaemonError is an answer of the daemon other than 200: it was reached,
// and said no.
type DaemonError struct {
	Code int
	Msg  string
}

func (e *DaemonError) Error() string { return fmt.Sprintf("the daemon answered %d: %s", e.Code, e.Msg) }
