// Command image writes the OCI image tarballs the node e2e tests (and anyone
// without Docker) import into containerd:
//
//	proxyd.tar  proxyd:dev   /proxyd (static) + iptables-nft/legacy and their libs
//	pause.tar   proxyd.local/pause:dev  a static pause binary (sandbox_image)
//	echo.tar    proxyd.local/echo:dev   test/e2e/echo (static)
//
// and, with -only naming them, the cluster lab's images under their
// upstream names (upstream.go): agnhost, busybox, distroless-iptables,
// regression-issue-74839 (the e2e test images), coredns and kube-proxy,
// from the prebuilt binaries the flags of those names give.
//
// Usage (as root or anyone who may run apt-get download):
//
//	go run ./hack/image -out DIR [-proxyd bin/proxyd] [-debs ~/.cache/proxyd/debs]
//
// The Go binaries are built with CGO_ENABLED=0 -trimpath; the iptables
// userspace comes from Debian .debs fetched with `apt-get download` and
// unpacked with `dpkg-deb -x`, so the contents depend only on the source
// tree, the Go toolchain and the Debian package versions (written to
// DIR/debs.txt and the image label org.proxyd.debs). Every tar entry has
// mtime 0 and owner 0:0, so equal inputs give equal layer digests.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image references. "proxyd:dev" is what deploy/daemonset.yaml says; CRI
// normalizes it to docker.io/library/proxyd:dev, which is also what the
// tarball's RepoTags become.
const (
	ProxydRef = "proxyd:dev"
	PauseRef  = "proxyd.local/pause:dev"
	EchoRef   = "proxyd.local/echo:dev"
	// UpstreamPauseRef is the pause image test/utils/image names at v1.37.2.
	UpstreamPauseRef = "registry.k8s.io/pause:3.10.2"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Debs are the Debian packages whose files go into the proxyd image: the
// iptables userspace (nft and legacy backends) and every shared library it
// links against. libc6 is handled apart (only its /lib files).
var Debs = []string{"iptables", "libip4tc2", "libip6tc2", "libxtables12", "libnftnl11",
	"libmnl0", "libnetfilter-conntrack3", "libnfnetlink0"}

func main() {
	out := flag.String("out", "", "directory for proxyd.tar, pause.tar, echo.tar (required)")
	proxyd := flag.String("proxyd", "", "a prebuilt static proxyd binary (default: build ./cmd/proxyd)")
	debDir := flag.String("debs", filepath.Join(os.Getenv("HOME"), ".cache", "proxyd", "debs"), "cache of downloaded .debs")
	only := flag.String("only", "proxyd,pause,echo", "comma-separated images to write (also: "+upstreamNames()+")")
	binFlags := map[string]string{}
	for _, b := range []string{"agnhost", "regression-issue-74839", "coredns", "kube-proxy"} {
		flag.Func(b, "a prebuilt static "+b+" binary (for the image of that name)", func(v string) error { binFlags[b] = v; return nil })
	}
	rootfs := flag.String("rootfs", "", "only stage the proxyd image's file tree into this directory (the Dockerfile uses it)")
	flag.Parse()
	if *rootfs != "" {
		work := *rootfs + ".work"
		_, err := stageProxyd(*rootfs, *proxyd, *debDir, work)
		_ = os.RemoveAll(work)
		if err != nil {
			log.Fatalf("image: %v", err)
		}
		return
	}
	if *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*out, *proxyd, *debDir, strings.Split(*only, ","), binFlags); err != nil {
		log.Fatalf("image: %v", err)
	}
}

func run(out, proxydBin, debDir string, only []string, binFlags map[string]string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "proxyd-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	want := map[string]bool{}
	for _, o := range only {
		want[strings.TrimSpace(o)] = true
	}
	if want["pause"] {
		// Also the upstream pause tag: e2e tests and kubelets ask for it.
		if err := goImage(work, out, "pause", "./hack/image/pause", "", PauseRef, UpstreamPauseRef); err != nil {
			return err
		}
	}
	if want["echo"] {
		if err := goImage(work, out, "echo", "./test/e2e/echo", "", EchoRef); err != nil {
			return err
		}
	}
	if want["proxyd"] {
		if err := proxydImage(work, out, proxydBin, debDir); err != nil {
			return err
		}
	}
	return buildUpstream(work, out, debDir, want, binFlags)
}

func upstreamNames() string {
	var names []string
	for _, im := range upstreamImages {
		names = append(names, im.name)
	}
	return strings.Join(names, ",")
}

// goImage builds pkg statically and writes an image holding only /NAME.
func goImage(work, out, nm, pkg, prebuilt string, refs ...string) error {
	root := filepath.Join(work, nm+"-root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(root, nm)
	if err := goBuild(pkg, prebuilt, bin); err != nil {
		return err
	}
	return writeImage(root, filepath.Join(out, nm+".tar"), refs, []string{"/" + nm}, nil, nil)
}

// proxydImage stages /proxyd plus the iptables userspace and writes proxyd.tar.
func proxydImage(work, out, prebuilt, debDir string) error {
	root := filepath.Join(work, "proxyd-root")
	versions, err := stageProxyd(root, prebuilt, debDir, work)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "debs.txt"), []byte(strings.Join(versions, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	labels := map[string]string{"org.proxyd.debs": strings.Join(versions, " ")}
	return writeImage(root, filepath.Join(out, "proxyd.tar"), []string{ProxydRef}, []string{"/proxyd"}, nil, labels)
}

// stageProxyd fills root with the proxyd image's files and returns the
// Debian package versions used (pkg=version).
func stageProxyd(root, prebuilt, debDir, work string) ([]string, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	if err := goBuild("./cmd/proxyd", prebuilt, filepath.Join(root, "proxyd")); err != nil {
		return nil, err
	}
	debs, err := fetchDebs(debDir, append(append([]string{}, Debs...), "libc6"))
	if err != nil {
		return nil, err
	}
	var versions []string
	for _, d := range debs {
		versions = append(versions, d.Pkg+"="+d.Version)
		if d.Pkg == "libc6" {
			err = extractLibc(d.Path, root, work)
		} else {
			err = dpkgExtract(d.Path, root)
		}
		if err != nil {
			return nil, err
		}
	}
	return versions, finishRootfs(root)
}

// goBuild copies prebuilt to dst, or builds pkg there with CGO_ENABLED=0.
func goBuild(pkg, prebuilt, dst string) error {
	begin := time.Now()
	if prebuilt != "" {
		b, err := os.ReadFile(prebuilt)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o755)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", dst, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	log.Printf("built %s in %.1fs", pkg, time.Since(begin).Seconds())
	return nil
}

// writeImage writes root as a single-layer image tarball tagged refs.
func writeImage(root, path string, refs, entrypoint, cmd []string, labels map[string]string) error {
	layerTar, err := tarDir(root)
	if err != nil {
		return fmt.Errorf("layer of %s: %w", root, err)
	}
	layer, err := tarball.LayerFromOpener(opener(layerTar))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config = v1.Config{
		Entrypoint: entrypoint,
		Cmd:        cmd,
		Env:        []string{"PATH=" + defaultPath},
		WorkingDir: "/",
		Labels:     labels,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	tags := map[name.Reference]v1.Image{}
	for _, ref := range refs {
		tag, err := name.NewTag(ref)
		if err != nil {
			return err
		}
		tags[tag] = img
	}
	// Write aside and rename: a cluster lab may be importing the old file.
	if err := tarball.MultiRefWriteToFile(path+".tmp", tags); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return err
	}
	d, _ := img.Digest()
	fi, _ := os.Stat(path)
	log.Printf("wrote %s (%s, %d KiB, %s)", path, strings.Join(refs, " "), fi.Size()/1024, d)
	return nil
}
