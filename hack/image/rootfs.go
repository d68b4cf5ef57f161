package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Deb is one downloaded Debian package.
type Deb struct {
	Pkg, Version, Path string
}

// fetchDebs makes sure dir holds a .deb of each package (the candidate
// version of the machine's apt lists) and returns them in order. A .deb
// already in dir for the candidate version is reused.
func fetchDebs(dir string, pkgs []string) ([]Deb, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	vers, err := candidates(pkgs)
	if err != nil {
		return nil, err
	}
	var debs []Deb
	var missing []string
	for _, p := range pkgs {
		ver := vers[p]
		d := Deb{Pkg: p, Version: ver, Path: debPath(dir, p, ver)}
		if d.Path == "" {
			missing = append(missing, p+"="+ver)
		}
		debs = append(debs, d)
	}
	if len(missing) > 0 {
		log.Printf("apt-get download %s", strings.Join(missing, " "))
		cmd := exec.Command("apt-get", append([]string{"download", "-q"}, missing...)...)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get download (run apt-get update first?): %w\n%s", err, b)
		}
		for i := range debs {
			if debs[i].Path == "" {
				if debs[i].Path = debPath(dir, debs[i].Pkg, debs[i].Version); debs[i].Path == "" {
					return nil, fmt.Errorf("apt-get download %s: no .deb in %s", debs[i].Pkg, dir)
				}
			}
		}
	}
	return debs, nil
}

// candidates returns apt's candidate version of each package, from one
// apt-cache call (each call reads the whole cache: seconds on a busy machine).
func candidates(pkgs []string) (map[string]string, error) {
	b, err := exec.Command("apt-cache", append([]string{"policy"}, pkgs...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache policy: %w", err)
	}
	vers := map[string]string{}
	cur := ""
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutSuffix(line, ":"); ok && !strings.HasPrefix(line, " ") {
			cur = name
			continue
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate:"); ok && cur != "" {
			if v = strings.TrimSpace(v); v != "" && v != "(none)" {
				vers[cur] = v
			}
		}
	}
	for _, p := range pkgs {
		if vers[p] == "" {
			return nil, fmt.Errorf("apt-cache policy %s: no candidate version (apt-get update?)", p)
		}
	}
	return vers, nil
}

// debPath finds PKG_VERSION_*.deb in dir (apt escapes ':' in an epoch as %3a).
func debPath(dir, pkg, ver string) string {
	ver = strings.ReplaceAll(ver, ":", "%3a")
	m, _ := filepath.Glob(filepath.Join(dir, pkg+"_"+ver+"_*.deb"))
	if len(m) == 0 {
		return ""
	}
	return m[0]
}

func dpkgExtract(deb, dst string) error {
	if b, err := exec.Command("dpkg-deb", "-x", deb, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w\n%s", deb, err, b)
	}
	return nil
}

// extractLibc unpacks libc6 apart and copies only the dynamic loader and
// the shared libraries under /lib and /lib64 (no gconv, locales or docs).
func extractLibc(deb, root, work string) error {
	tmp := filepath.Join(work, "libc6")
	if err := dpkgExtract(deb, tmp); err != nil {
		return err
	}
	for _, top := range []string{"lib", "lib64", "usr/lib64"} {
		src := filepath.Join(tmp, top)
		if _, err := os.Lstat(src); err != nil {
			continue
		}
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(tmp, p)
			if d.IsDir() {
				if d.Name() == "gconv" || d.Name() == "audit" {
					return filepath.SkipDir
				}
				return os.MkdirAll(filepath.Join(root, rel), 0o755)
			}
			if !strings.Contains(d.Name(), ".so") {
				return nil
			}
			return copyEntry(p, filepath.Join(root, rel))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func copyEntry(src, dst string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	_ = os.Remove(dst)
	if fi.Mode()&fs.ModeSymlink != 0 {
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(t, dst)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, fi.Mode().Perm())
}

// finishRootfs drops documentation, adds the generic iptables names
// (pointing at the nft backend, Debian's default alternative) and the
// directories a process expects.
func finishRootfs(root string) error {
	for _, d := range []string{"usr/share", "etc/init.d", "etc/default"} {
		if err := os.RemoveAll(filepath.Join(root, d)); err != nil {
			return err
		}
	}
	sbin := filepath.Join(root, "usr/sbin")
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-restore", "-save"} {
			link := filepath.Join(sbin, fam+suffix)
			if _, err := os.Lstat(link); err == nil {
				continue
			}
			if err := os.Symlink("xtables-nft-multi", link); err != nil {
				return err
			}
		}
	}
	for _, need := range []string{"usr/sbin/xtables-nft-multi", "usr/sbin/xtables-legacy-multi",
		"usr/sbin/iptables-nft-restore", "usr/sbin/ip6tables-legacy-save"} {
		if _, err := os.Lstat(filepath.Join(root, need)); err != nil {
			return fmt.Errorf("rootfs lacks %s: %w", need, err)
		}
	}
	// The nft backend and getpwnam-free tools are happy without more /etc.
	return skeleton(root, map[string]string{
		"etc/passwd": "root:x:0:0:root:/:/proxyd\n",
		"etc/group":  "root:x:0:\n",
	})
}

// skeleton adds the directories a container expects (/tmp sticky),
// /etc/nsswitch.conf and the files in etc (path → content).
func skeleton(root string, etc map[string]string) error {
	for _, d := range []string{"tmp", "run", "etc", "proc", "sys", "dev", "var/run", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777|fs.ModeSticky); err != nil {
		return err
	}
	etc["etc/nsswitch.conf"] = "hosts: files dns\n"
	for name, content := range etc {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// tarDir returns a tar of root's tree with sorted entries, mtime 0 and
// owner 0:0, so equal trees give equal bytes.
func tarDir(root string) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return nil, err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(root, p)
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.ModTime, h.AccessTime, h.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		h.Format, h.PAXRecords = tar.FormatUnknown, nil
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// opener returns a tarball.Opener over b.
func opener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}
