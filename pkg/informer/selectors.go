package informer

import (
	"errors"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/proxyd/proxyd/pkg/informer/convert"
)

// selector is the server-side label selector of one source's informer:
// never headless, and either no service-proxy-name label (sourceDefault) or
// service-proxy-name=proxyName (sourceNamed). Slices must also name their
// Service. This is kube-proxy's selector, plus the named variant.
func selector(src source, proxyName string, slices bool) string {
	reqs := []string{"!" + v1.IsHeadlessService}
	if src == sourceNamed {
		reqs = append(reqs, convert.LabelServiceProxyName+"="+proxyName)
	} else {
		reqs = append(reqs, "!"+convert.LabelServiceProxyName)
	}
	if slices {
		reqs = append(reqs, discovery.LabelServiceName)
	}
	return strings.Join(reqs, ",")
}

// validProxyName checks that name can be a label value, and so can appear
// in a selector and on an object.
func validProxyName(name string) error {
	if msgs := validation.IsValidLabelValue(name); len(msgs) > 0 {
		return errors.New("invalid proxy name: " + strings.Join(msgs, "; "))
	}
	return nil
}
