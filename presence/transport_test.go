package presence

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// selfSigned makes a certificate for 127.0.0.1 that lives for the test.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lamplighter test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestSubscribeOverTLS(t *testing.T) {
	conf := selfSigned(t)
	env := newEnv(t, trusted, func(o *Options) {
		o.Listen = append(o.Listen, Listener{Transport: "tls", Address: "127.0.0.1:0", TLS: conf})
	})
	tlsAddr := env.srv.Addrs()[2].String()
	p := newPhone(t, "TLS")
	res, _ := p.subscribe(tlsAddr, subReq{user: "100", event: "dialog", expires: 600})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE over TLS: %d", res.StatusCode)
	}
	if c := res.Contact(); c == nil || c.Address.Scheme != "sips" {
		t.Errorf("Contact over TLS is not sips: %v", c)
	}
	// The phone has no TLS listener: the NOTIFY can only come back on the
	// connection its SUBSCRIBE opened.
	n := p.nextNotify(3 * time.Second)
	if n.Transport() != "TLS" {
		t.Errorf("NOTIFY over %s", n.Transport())
	}
	env.bridge.Apply(ringing("101"))
	p.notifyWhere("early", 3*time.Second)
}

func TestSubscribeOverIPv6(t *testing.T) {
	if c, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		c.Close()
	}
	env := newEnv(t, trusted, func(o *Options) {
		o.Trusted = append(o.Trusted, mustPrefix("::1/128"))
		o.Listen = []Listener{{Transport: "udp", Address: "[::1]:0"}, {Transport: "tcp", Address: "[::]:0"}}
	})
	p := newPhoneOn(t, "UDP", "::1")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE over IPv6: %d", res.StatusCode)
	}
	n := p.nextNotify(2 * time.Second)
	if n.Source() != env.udp || !strings.Contains(string(n.Body()), `entity="sip:100@[::1]:`) {
		t.Errorf("NOTIFY from %s (want %s), body:\n%s", n.Source(), env.udp, n.Body())
	}
	if via := n.Via(); via == nil || via.Host != "::1" && via.Host != "[::1]" {
		t.Errorf("Via sent-by %v", via)
	}
}
