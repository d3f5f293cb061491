package ari

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/adapters/pbxtest"
)

func TestCallerIDsAreSplit(t *testing.T) {
	for in, want := range map[string][2]string{
		`"User 100" <100>`:   {"User 100", "100"},
		`Reception <200>`:    {"Reception", "200"},
		`101`:                {"", "101"},
		``:                   {"", ""},
		`"Odd <name>" <102>`: {"Odd <name>", "102"},
	} {
		if name, number := splitCallerID(in); name != want[0] || number != want[1] {
			t.Errorf("%q: %q %q, want %q %q", in, name, number, want[0], want[1])
		}
	}
}

// TestDiscoverAsksTheRealAsterisk: Discover on the real Asterisk of
// ../shared/pbx, as its read-only ARI user, finds its PJSIP endpoints
// with their caller ids and contexts, and follows an endpoint added to
// and removed from pjsip.conf while Asterisk runs (a reload).
func TestDiscoverAsksTheRealAsterisk(t *testing.T) {
	ast := pbxtest.StartAsterisk(t, pbxtest.Config{})
	a, err := New(adapters.Connection{Name: "ast", Address: ast.ARI(), Username: "reader", Password: "reader"}, Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	find := func() map[string]adapters.DiscoveredUser {
		t.Helper()
		users, err := a.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		byExt := map[string]adapters.DiscoveredUser{}
		for _, u := range users {
			byExt[u.Extension] = u
		}
		return byExt
	}
	got := find()
	if len(got) != 10 {
		t.Fatalf("%d endpoints, want 100-109: %+v", len(got), got)
	}
	if u := got["105"]; u.PBX != "ast" || u.Name != "Phone 105" || u.Device != "PJSIP/105" || u.Context != "phones" {
		t.Errorf("105: %+v", u)
	}

	// An endpoint added while Asterisk runs, whose name is not its
	// number, then removed again.
	conf := ast.ConfigFile("pjsip.conf")
	before, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	added := string(before) + "\n[reception](phone-endpoint)\ncallerid = \"Front Desk\" <200>\n"
	if err := os.WriteFile(conf, []byte(added), 0o644); err != nil {
		t.Fatal(err)
	}
	ast.CLI("module reload res_pjsip.so")
	if u, ok := find()["200"]; !ok || u.Name != "Front Desk" || u.Device != "PJSIP/reception" {
		t.Errorf("the endpoint added: %+v (found %v)", u, ok)
	}
	if err := os.WriteFile(conf, before, 0o644); err != nil {
		t.Fatal(err)
	}
	ast.CLI("module reload res_pjsip.so")
	if u, ok := find()["200"]; ok {
		t.Errorf("the endpoint removed is still found: %+v", u)
	}
}
