package presence

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
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

// TestNotifyFollowsRouteSet: a SUBSCRIBE that came through a proxy
// (Record-Route) gets its NOTIFYs through that proxy, with the route set
// as Route headers and the watcher's Contact as Request-URI (RFC 3261
// §12.2.1.1, loose routing).
func TestNotifyFollowsRouteSet(t *testing.T) {
	env := newEnv(t, trusted)
	proxy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	route := fmt.Sprintf("<sip:127.0.0.1:%d;lr>", proxy.LocalAddr().(*net.UDPAddr).Port)
	p := newPhone(t, "UDP")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600,
		headers: []sip.Header{sip.NewHeader("Record-Route", route)}})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	proxy.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, err := proxy.Read(buf)
	if err != nil {
		t.Fatalf("no NOTIFY reached the proxy: %v", err)
	}
	msg, err := sip.ParseMessage(buf[:n])
	if err != nil {
		t.Fatalf("NOTIFY does not parse: %v\n%s", err, buf[:n])
	}
	req, ok := msg.(*sip.Request)
	if !ok || req.Method != sip.NOTIFY {
		t.Fatalf("proxy got %s", buf[:n])
	}
	if got := header(req, "Route"); got != route {
		t.Errorf("Route %q, want %q", got, route)
	}
	if req.Recipient.Port != p.addr.Port || req.Recipient.Host != "127.0.0.1" {
		t.Errorf("Request-URI %s is not the watcher's Contact (port %d)", req.Recipient.String(), p.addr.Port)
	}
	if cl := req.ContentLength(); cl == nil || int(*cl) != len(req.Body()) || len(req.Body()) == 0 {
		t.Errorf("Content-Length %v for a %d-byte body", cl, len(req.Body()))
	}
}
