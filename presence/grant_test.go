package presence

import (
	"net/netip"
	"strings"
	"testing"
)

// TestGrantsFollowTheConfig: what let a watcher in is checked again
// against new credentials: a removed login or a moved username is
// rejected, a changed password deactivated, a trusted source that is no
// longer trusted rejected; records from before grants existed hold only
// for a watcher who still has a login.
func TestGrantsFollowTheConfig(t *testing.T) {
	a := newAuthenticator("r", nil, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		[]Credential{{Username: "bob", UserID: "bob", Password: "one"}, {Username: "eve", UserID: "eve", Password: "x"}})
	g := a.grant(identity{UserID: "bob", Username: "bob"})
	if !strings.HasPrefix(g, "digest:bob:") || strings.Contains(g, "one") {
		t.Fatalf("grant %q", g)
	}
	if g2 := a.grant(identity{UserID: "bob", Username: "bob"}); g2 == g {
		t.Errorf("two grants share a salt")
	}
	trusted := a.grant(identity{Trusted: true})
	cases := []struct {
		name, grant, source, watcher string
		creds                        []Credential
		want                         string
	}{
		{"unchanged", g, "192.0.2.1:5060", "bob", []Credential{{Username: "bob", UserID: "bob", Password: "one"}}, ""},
		{"password changed", g, "192.0.2.1:5060", "bob", []Credential{{Username: "bob", UserID: "bob", Password: "two"}}, reasonDeactivated},
		{"login removed", g, "192.0.2.1:5060", "bob", nil, reasonRejected},
		{"username moved to another user", g, "192.0.2.1:5060", "bob", []Credential{{Username: "bob", UserID: "eve", Password: "one"}}, reasonRejected},
		{"trusted still", trusted, "10.1.2.3:5060", "", nil, ""},
		{"no longer trusted", trusted, "192.0.2.1:5060", "", nil, reasonRejected},
		{"legacy with login", "", "192.0.2.1:5060", "bob", []Credential{{Username: "bob", UserID: "bob", Password: "two"}}, ""},
		{"legacy without login", "", "192.0.2.1:5060", "bob", nil, reasonRejected},
		{"forged grant", "digest:bob", "192.0.2.1:5060", "bob", []Credential{{Username: "bob", UserID: "bob", Password: "one"}}, reasonRejected},
	}
	for _, c := range cases {
		a.setCredentials(c.creds)
		if got := a.revoked(c.grant, c.source, c.watcher); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
