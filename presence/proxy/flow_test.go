package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestTokensRoundTripAndRefuseForgeries(t *testing.T) {
	tk := newTokens()
	for _, f := range []flow{
		{transport: "UDP", addr: netip.MustParseAddrPort("192.0.2.7:5062")},
		{transport: "TLS", addr: netip.MustParseAddrPort("[2001:db8::1]:40123")},
	} {
		s := tk.mint(f, 3)
		got, target, ok := tk.read(s)
		if !ok || got != f || target != 3 {
			t.Fatalf("read(mint(%v)) = %v, %d, %v", f, got, target, ok)
		}
		// One character changed anywhere: not ours.
		for i := len(tokenPrefix); i < len(s); i++ {
			b := []byte(s)
			b[i] ^= 1
			if _, _, ok := tk.read(string(b)); ok {
				t.Fatalf("a token damaged at %d was taken: %s", i, b)
			}
		}
		// Another process's key: not ours.
		if _, _, ok := newTokens().read(s); ok {
			t.Fatal("a token from another key was taken")
		}
	}
	for _, s := range []string{"", "100", "ll-", "ll-" + strings.Repeat("A", 43)} {
		if _, _, ok := tk.read(s); ok {
			t.Fatalf("%q taken for a token", s)
		}
	}
}

func TestBindingsAreBoundedAndExpire(t *testing.T) {
	now := time.Unix(1000, 0)
	bs := newBindings(2)
	bs.now = func() time.Time { return now }
	mk := func(port uint16, exp time.Duration) binding {
		return binding{user: "100", flow: flow{transport: "UDP", addr: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port)},
			contacts: []string{"100@192.0.2.1:" + string(rune('0'+port%10))}, expires: now.Add(exp)}
	}
	if !bs.put(mk(1, time.Minute)) || !bs.put(mk(2, 2*time.Minute)) {
		t.Fatal("bindings within the bound refused")
	}
	if bs.put(mk(3, time.Minute)) {
		t.Fatal("a binding past the bound was kept")
	}
	if !bs.put(mk(1, 5*time.Minute)) { // a refresh of a held flow always fits
		t.Fatal("a refresh was refused at the bound")
	}
	if _, ok := bs.onFlow(mk(1, 0).flow); !ok {
		t.Fatal("refreshed binding lost")
	}
	bs.put(mk(2, 0)) // unregistered
	if _, ok := bs.onFlow(mk(2, 0).flow); ok || bs.len() != 1 {
		t.Fatalf("an unregistered flow is still held (%d held)", bs.len())
	}
	now = now.Add(6 * time.Minute)
	if _, ok := bs.onFlow(mk(1, 0).flow); ok {
		t.Fatal("an expired binding still stands for its user")
	}
	bs.expire(now)
	if bs.len() != 0 {
		t.Fatalf("%d bindings held after expiry", bs.len())
	}
}
