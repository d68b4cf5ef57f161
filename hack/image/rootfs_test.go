package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Equal trees give equal layer bytes, whatever their mtimes and owners.
func TestTarDirIsReproducible(t *testing.T) {
	mk := func(mtime time.Time) []byte {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "proxyd"), []byte("binary"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("xtables-nft-multi", filepath.Join(root, "usr/sbin/iptables")); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"proxyd", "usr/sbin", "usr"} {
			if err := os.Chtimes(filepath.Join(root, p), mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		b, err := tarDir(root)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := mk(time.Unix(1000, 0))
	b := mk(time.Now())
	if !bytes.Equal(a, b) {
		t.Fatalf("tar of equal trees differs (%d vs %d bytes)", len(a), len(b))
	}
}
