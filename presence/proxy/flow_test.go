package proxy

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTokensRoundTripAndRefuseForgeries(t *testing.T) {
	tk := newTokens(nil)
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
		if _, _, ok := newTokens(nil).read(s); ok {
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

func TestTokenKeySurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	k1, replaced, err := LoadTokenKey(dir)
	if err != nil || replaced || len(k1) != 32 {
		t.Fatalf("first key: %d bytes, replaced %v, %v", len(k1), replaced, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, TokenKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode(), err)
	}
	f := flow{transport: "UDP", addr: netip.MustParseAddrPort("192.0.2.7:5062")}
	tok := newTokens(k1).mint(f, 0)
	// The next process reads the same key: a Path minted before the
	// restart still routes.
	k2, _, err := LoadTokenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, ok := newTokens(k2).read(tok); !ok || got != f {
		t.Fatal("a token from before the restart is not read after it")
	}
	// A damaged file is replaced, and said so.
	os.WriteFile(filepath.Join(dir, TokenKeyFile), []byte("short"), 0o600)
	k3, replaced, err := LoadTokenKey(dir)
	if err != nil || !replaced || len(k3) != 32 {
		t.Fatalf("damaged key file: %d bytes, replaced %v, %v", len(k3), replaced, err)
	}
	// One that cannot be read is an error, not a silent new key.
	os.Remove(filepath.Join(dir, TokenKeyFile))
	os.Mkdir(filepath.Join(dir, TokenKeyFile), 0o700)
	if _, _, err := LoadTokenKey(dir); err == nil {
		t.Fatal("an unreadable key file gave a key")
	}
}

// TestTokensTakeAClusterKey: a node taking the cluster's key mints under
// it at once, still reads what it minted under its own, and reads what
// another node holding the cluster's key minted; a key nobody holds is
// still refused.
func TestTokensTakeAClusterKey(t *testing.T) {
	own, shared, stranger := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	f := flow{transport: "TCP", addr: netip.MustParseAddrPort("[2001:db8::7]:5061")}
	tk := newTokens(own)
	before := tk.mint(f, 1)
	if !tk.setKey(shared) || tk.setKey(shared) || tk.setKey([]byte("short")) {
		t.Fatal("setKey: want a change for a new key only")
	}
	if got, target, ok := tk.read(before); !ok || got != f || target != 1 {
		t.Error("a token minted under the node's own key is no longer read")
	}
	after := tk.mint(f, 1)
	if _, _, ok := newTokens(shared).read(after); !ok {
		t.Error("another node with the cluster's key cannot read a token minted after the change")
	}
	if _, _, ok := tk.read(newTokens(stranger).mint(f, 1)); ok {
		t.Error("a token under a key nobody holds is read")
	}
	dir := t.TempDir()
	if err := SaveTokenKey(dir, shared); err != nil {
		t.Fatal(err)
	}
	if k, replaced, err := LoadTokenKey(dir); err != nil || replaced || !bytes.Equal(k, shared) {
		t.Errorf("the saved cluster key reads back as %x (%v %v)", k, replaced, err)
	}
}
