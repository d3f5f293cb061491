package presence

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestRateLimiterBuckets: a burst, then the refill rate; addresses apart;
// idle ones forgotten; the table bounded.
func TestRateLimiterBuckets(t *testing.T) {
	r := newRateLimiter(10, 20)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	now := time.Unix(1000, 0)
	ok := 0
	for range 100 {
		if allowed, _ := r.allow(a, now); allowed {
			ok++
		}
	}
	if ok != 20 {
		t.Errorf("%d let through in a burst, want 20", ok)
	}
	if allowed, _ := r.allow(b, now); !allowed {
		t.Error("another address was limited")
	}
	if allowed, _ := r.allow(a, now.Add(100*time.Millisecond)); !allowed {
		t.Error("no token after a tenth of a second at 10/s")
	}
	if allowed, _ := r.allow(a, now.Add(100*time.Millisecond)); allowed {
		t.Error("two tokens after a tenth of a second at 10/s")
	}
	later := now.Add(time.Minute)
	r.allow(netip.MustParseAddr("192.0.2.3"), later)
	if n := r.tracked(); n != 1 {
		t.Errorf("%d addresses tracked after a minute, want the one just seen", n)
	}
	for i := range maxTracked + 100 {
		r.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), later)
	}
	if n := r.tracked(); n > maxTracked {
		t.Errorf("%d addresses tracked, above the bound %d", n, maxTracked)
	}
}

// TestRequestsPerAddress: a peer over its rate gets no answers past its
// burst; another address is answered meanwhile; trusted ones are never
// limited.
func TestRequestsPerAddress(t *testing.T) {
	env := newEnv(t, func(o *Options) { o.RequestsPerAddress, o.RequestBurst = 5, 50 })
	flood := newRawPeer(t, env.udp)
	for range 200 {
		msg, _ := flood.request("OPTIONS", "100", nil, "")
		flood.send(msg)
	}
	answered := 0
	for deadline := time.After(2 * time.Second); ; {
		select {
		case <-flood.responses:
			answered++
			continue
		case <-deadline:
		}
		break
	}
	if answered < 50 || answered > 70 {
		t.Errorf("%d of 200 answered, want the burst of 50 and a few refills", answered)
	}
	// Another address (127.0.0.2) is answered at once.
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	conn.Close()
	other := newRawPeerOn(t, env.udp, "127.0.0.2")
	msg, id := other.request("OPTIONS", "100", nil, "")
	other.send(msg)
	if res := other.response(id, 5*time.Second); res.StatusCode != 200 {
		t.Errorf("another address: %d", res.StatusCode)
	}
}
