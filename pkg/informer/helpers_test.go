package informer

import (
	"github.com/proxyd/proxyd/pkg/informer/convert"
	"github.com/proxyd/proxyd/pkg/informer/convert/converttest"
)

func ptr[T any](v T) *T { return &v }

// The fixtures: a valid Service ns/web and a valid slice of it.
var (
	service   = converttest.Service
	slice     = converttest.Slice
	withLabel = converttest.WithLabel
)

// LabelServiceProxyName is the label the tests set.
const LabelServiceProxyName = convert.LabelServiceProxyName
