package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the lab's certificate authority. One CA signs the apiserver's
// serving certificate and every client certificate (it is the client CA too).
type pki struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	pem   []byte
	files map[string]string // role -> path, see writePKI
}

func newPKI() (*pki, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "proxyd-lab-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &pki{cert: cert, key: key, pem: pemBlock("CERTIFICATE", der), files: map[string]string{}}, nil
}

// issue signs a certificate for cn. With dns or ips it is a serving
// certificate, otherwise a client one.
func (p *pki) issue(cn string, orgs, dns []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if len(dns) > 0 || len(ips) > 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", kder), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writePKI writes the CA, the apiserver's serving pair, the service-account
// key pair and the admin and kube-proxy kubeconfigs into l.Dir.
func (l *Lab) writePKI() error {
	p, err := newPKI()
	if err != nil {
		return fmt.Errorf("lab CA: %w", err)
	}
	l.pki = p
	dir := filepath.Join(l.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	write := func(role, name string, data []byte) error {
		path := filepath.Join(dir, name)
		p.files[role] = path
		return os.WriteFile(path, data, 0o600)
	}
	if err := write("ca", "ca.crt", p.pem); err != nil {
		return err
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP(l.NodeIP),
		net.ParseIP(l.NodeIPv6), net.ParseIP("10.96.0.1"), net.ParseIP("fd00:10:96::1")}
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local", l.NodeName}
	crt, key, err := p.issue("kube-apiserver", nil, dns, ips)
	if err != nil {
		return fmt.Errorf("apiserver cert: %w", err)
	}
	if err := write("serving-cert", "apiserver.crt", crt); err != nil {
		return err
	}
	if err := write("serving-key", "apiserver.key", key); err != nil {
		return err
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saDER, err := x509.MarshalECPrivateKey(sa)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	if err := write("sa-key", "sa.key", pemBlock("EC PRIVATE KEY", saDER)); err != nil {
		return err
	}
	if err := write("sa-pub", "sa.pub", pemBlock("PUBLIC KEY", saPub)); err != nil {
		return err
	}
	if l.AdminKubeconfig, err = l.Kubeconfig("admin", "lab-admin", "system:masters"); err != nil {
		return err
	}
	if l.ProxyKubeconfig, err = l.Kubeconfig("kube-proxy", "system:kube-proxy"); err != nil {
		return err
	}
	return nil
}

// Kubeconfig writes Dir/<name>.kubeconfig for a client certificate with
// CommonName user and Organizations groups, signed by the lab CA, pointing at
// APIServerURL, and returns its path. Example: a kubelet identity is
// Kubeconfig("kubelet", "system:node:node1", "system:nodes").
func (l *Lab) Kubeconfig(name, user string, groups ...string) (string, error) {
	return l.KubeconfigAt(l.APIServerURL, name, user, groups...)
}

// KubeconfigAt is Kubeconfig for a client that reaches the apiserver at
// server (e.g. https://NodeIP:6443 from another namespace).
func (l *Lab) KubeconfigAt(server, name, user string, groups ...string) (string, error) {
	if l.pki == nil {
		return "", fmt.Errorf("lab: Kubeconfig before the CA exists")
	}
	crt, key, err := l.pki.issue(user, groups, nil, nil)
	if err != nil {
		return "", fmt.Errorf("client cert for %s: %w", user, err)
	}
	b64 := base64.StdEncoding.EncodeToString
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: lab
  context:
    cluster: lab
    user: %s
current-context: lab
`, server, b64(l.pki.pem), name, b64(crt), b64(key), name)
	path := filepath.Join(l.Dir, name+".kubeconfig")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// CAFile returns the path of the lab CA's certificate (PEM).
func (l *Lab) CAFile() string {
	if l.pki == nil {
		return ""
	}
	return l.pki.files["ca"]
}
