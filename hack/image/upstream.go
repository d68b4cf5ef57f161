package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// upstreamImage is an image the cluster lab imports under an upstream name:
// the images the upstream e2e selection runs (built from source here, with
// the userspace the tests call taken from Debian packages), CoreDNS and
// kube-proxy.
type upstreamImage struct {
	name string   // file name (name.tar) and -only key
	refs []string // tags
	// bins maps a path in the image to the flag naming the binary put there.
	bins map[string]string
	// debs are Debian packages unpacked into the image with their
	// dependency closure (less skipDebs); libc6 is reduced to its libraries.
	debs []string
	// busybox links every busybox applet that no package provides into /bin.
	busybox bool
	// sh is what /bin/sh points at ("" leaves it alone).
	sh string
	// links are symlinks (path → target) made before the busybox applets,
	// as Debian's update-alternatives would (it does not run here).
	links      map[string]string
	entrypoint []string
	cmd        []string
}

// upstreamImages are the images `make e2e-upstream` needs. The e2e names are
// test/utils/image/manifest.go's at v1.37.2.
var upstreamImages = []upstreamImage{
	{
		// agnhost's subcommands plus what the tests run in it through
		// `kubectl exec -- /bin/sh -c`: nc -v -t/-u -w, wget -T, curl, ss,
		// nslookup. /bin/sh is dash: busybox's shell runs its own nc applet
		// before PATH, and busybox wget -T crashes.
		name: "agnhost", refs: []string{"registry.k8s.io/e2e-test-images/agnhost:2.66.1"},
		bins:    map[string]string{"agnhost": "agnhost"},
		debs:    []string{"busybox-static", "dash", "netcat-openbsd", "curl", "wget", "iproute2"},
		links:   map[string]string{"bin/nc": "nc.openbsd"},
		busybox: true, sh: "dash", entrypoint: []string{"/agnhost"}, cmd: []string{"pause"},
	},
	{
		name: "busybox", refs: []string{"registry.k8s.io/e2e-test-images/busybox:1.37.0-2"},
		debs: []string{"busybox-static"}, busybox: true, sh: "busybox", cmd: []string{"sh"},
	},
	{
		// The KubeProxy tests exec sleep, sh, test, which, grep, cat and
		// conntrack in it.
		name: "distroless-iptables", refs: []string{"registry.k8s.io/build-image/distroless-iptables:v0.9.9"},
		debs:  []string{"busybox-static", "iptables", "conntrack"},
		links: iptablesLinks, busybox: true, sh: "busybox",
	},
	{
		name: "regression-issue-74839", refs: []string{"registry.k8s.io/e2e-test-images/regression-issue-74839:1.5"},
		bins:       map[string]string{"regression-issue-74839": "regression-issue-74839"},
		entrypoint: []string{"/regression-issue-74839"},
	},
	{
		name: "coredns", refs: []string{"proxyd.local/coredns:v1.15.0"},
		bins: map[string]string{"coredns": "coredns"}, entrypoint: []string{"/coredns"},
	},
	{
		// kube-proxy execs nft (nftables mode) and iptables-restore.
		name: "kube-proxy", refs: []string{"proxyd.local/kube-proxy:v1.37.2"},
		bins:  map[string]string{"usr/local/bin/kube-proxy": "kube-proxy"},
		debs:  append([]string{"nftables"}, Debs...),
		links: iptablesLinks, entrypoint: []string{"/usr/local/bin/kube-proxy"},
	},
}

// iptablesLinks are the names Debian's update-alternatives gives iptables
// (nft backend, the default), which dpkg-deb -x does not make.
var iptablesLinks = map[string]string{
	"usr/sbin/iptables": "xtables-nft-multi", "usr/sbin/iptables-save": "xtables-nft-multi",
	"usr/sbin/iptables-restore": "xtables-nft-multi", "usr/sbin/ip6tables": "xtables-nft-multi",
	"usr/sbin/ip6tables-save": "xtables-nft-multi", "usr/sbin/ip6tables-restore": "xtables-nft-multi",
}

// skipDebs are dependencies that only matter to dpkg, debconf or installers.
var skipDebs = map[string]bool{"debconf": true, "cdebconf": true, "dpkg": true, "install-info": true,
	"libdebian-installer4": true, "libnewt0.52": true, "libslang2": true, "libtextwrap1": true, "tar": true,
	"readline-common": true, "perl-base": true, "debianutils": true, "init-system-helpers": true}

// debClosure returns pkgs and their Depends/Pre-Depends, recursively (apt's
// view), without skipDebs, sorted; libc6 is always in it.
func debClosure(pkgs []string) ([]string, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances"}, pkgs...)
	out, err := exec.Command("apt-cache", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache depends %v (apt-get update?): %w", pkgs, err)
	}
	set := map[string]bool{"libc6": true}
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "<") {
			continue
		}
		if p := strings.TrimSpace(line); !skipDebs[p] {
			set[p] = true
		}
	}
	var all []string
	for p := range set {
		all = append(all, p)
	}
	sort.Strings(all)
	return all, nil
}

// buildUpstream writes out/NAME.tar for each wanted upstream image, unless
// out/NAME.key says the same inputs (spec, binaries, Debian versions)
// already made it.
func buildUpstream(work, out, debDir string, want map[string]bool, binFlags map[string]string) error {
	for _, im := range upstreamImages {
		if !want[im.name] {
			continue
		}
		if err := im.write(work, out, debDir, binFlags); err != nil {
			return fmt.Errorf("image %s: %w", im.name, err)
		}
	}
	return nil
}

func (im upstreamImage) write(work, out, debDir string, binFlags map[string]string) error {
	var debs []Deb
	if len(im.debs) > 0 {
		names, err := debClosure(im.debs)
		if err != nil {
			return err
		}
		if debs, err = fetchDebs(debDir, names); err != nil {
			return err
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "%#v\n", im)
	for _, d := range debs {
		fmt.Fprintf(h, "%s=%s\n", d.Pkg, d.Version)
	}
	var paths []string
	for p := range im.bins {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		src := binFlags[im.bins[p]]
		if src == "" {
			return fmt.Errorf("needs -%s", im.bins[p])
		}
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	key := hex.EncodeToString(h.Sum(nil))
	tarPath, keyPath := filepath.Join(out, im.name+".tar"), filepath.Join(out, im.name+".key")
	if b, err := os.ReadFile(keyPath); err == nil && string(b) == key {
		if _, err := os.Stat(tarPath); err == nil {
			log.Printf("%s: up to date", tarPath)
			return nil
		}
	}
	root := filepath.Join(work, im.name+"-root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for _, d := range debs {
		var err error
		if d.Pkg == "libc6" {
			err = extractLibc(d.Path, root, work)
		} else {
			err = dpkgExtract(d.Path, root)
		}
		if err != nil {
			return err
		}
	}
	for _, p := range paths {
		dst := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyEntry(binFlags[im.bins[p]], dst); err != nil {
			return err
		}
	}
	if err := im.finish(root); err != nil {
		return err
	}
	if err := writeImage(root, tarPath, im.refs, im.entrypoint, im.cmd, nil); err != nil {
		return err
	}
	return os.WriteFile(keyPath, []byte(key), 0o644)
}

// finish links busybox applets and /bin/sh, drops documentation and adds
// the files and directories a container expects.
func (im upstreamImage) finish(root string) error {
	for _, d := range []string{"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "etc/init.d"} {
		if err := os.RemoveAll(filepath.Join(root, d)); err != nil {
			return err
		}
	}
	if err := skeleton(root, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		return err
	}
	for path, target := range im.links {
		if err := os.Symlink(target, filepath.Join(root, path)); err != nil {
			return err
		}
	}
	if im.busybox {
		bb := filepath.Join(root, "bin", "busybox")
		list, err := exec.Command(bb, "--list").Output()
		if err != nil {
			return fmt.Errorf("%s --list: %w", bb, err)
		}
		for _, applet := range strings.Fields(string(list)) {
			if exists(root, "bin/"+applet) || exists(root, "usr/bin/"+applet) ||
				exists(root, "sbin/"+applet) || exists(root, "usr/sbin/"+applet) {
				continue
			}
			if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
				return err
			}
		}
	}
	if im.sh != "" {
		sh := filepath.Join(root, "bin", "sh")
		_ = os.Remove(sh)
		if err := os.Symlink(im.sh, sh); err != nil {
			return err
		}
	}
	return nil
}

func exists(root, rel string) bool {
	_, err := os.Lstat(filepath.Join(root, rel))
	return err == nil
}
