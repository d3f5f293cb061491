package ari

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
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

func TestHintsMakeNumbersAndResources(t *testing.T) {
	a := &Adapter{conn: adapters.Connection{Name: "ast"}}
	users := []adapters.DiscoveredUser{
		{PBX: "ast", Extension: "100", Device: "PJSIP/100"},
		{PBX: "ast", Extension: "alice", Device: "PJSIP/alice"}, // no number in its caller id
	}
	got := a.withHints(users, map[string]bool{"PJSIP/alice": true}, []hint{
		{Exten: "100", Context: "ext-local", Devices: []string{"PJSIP/100"}},
		{Exten: "2100", Context: "ext-local", Devices: []string{"PJSIP/100"}},
		{Exten: "201", Context: "ext-local", Devices: []string{"PJSIP/alice"}},
		{Exten: "*76100", Context: "ext-dnd-hints", Devices: []string{"Custom:DND100"}},
		{Exten: "100", Context: "ext-local", Devices: []string{"PJSIP/100", "Custom:DND100"}},
	})
	if len(got) != 4 {
		t.Fatalf("%d entries: %+v", len(got), got)
	}
	if u := got[0]; u.Extension != "100" || !slices.Equal(u.More, []string{"2100"}) {
		t.Errorf("100: %+v", u)
	}
	if u := got[1]; u.Extension != "201" || !slices.Equal(u.More, []string{"alice"}) {
		t.Errorf("alice: %+v", u)
	}
	if u := got[2]; !u.Resource || u.Extension != "*76100" || u.Device != "Custom:DND100" || u.Name != "DND100" || u.Context != "ext-dnd-hints" {
		t.Errorf("*76100: %+v", u)
	}
	if u := got[3]; !u.Resource || u.Extension != "100" || u.Device != "PJSIP/100" || !slices.Equal(u.OtherDevices, []string{"Custom:DND100"}) {
		t.Errorf("FreePBX's hint for 100: %+v", u)
	}
	if h, ok := parseHint("100", "ext-local", "PJSIP/100&Custom:DND100,CustomPresence:100"); !ok || !slices.Equal(h.Devices, []string{"PJSIP/100", "Custom:DND100"}) {
		t.Errorf("parseHint: %+v", h)
	}
}

// TestHintsThroughTheRealAMI: the real Asterisk's hints are read over AMI
// (100-109 on their endpoints), and a wrong password is a clear error.
func TestHintsThroughTheRealAMI(t *testing.T) {
	ast := pbxtest.StartAsterisk(t, pbxtest.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ami := &AMI{Address: "127.0.0.1:" + strconv.Itoa(ast.AMIPort), Username: "sidecar", Secret: "sidecar"}
	hints, err := readHints(ctx, ami, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for _, h := range hints {
		found[h.Exten] = strings.Join(h.Devices, "&")
	}
	if len(found) != 10 || found["105"] != "PJSIP/105" {
		t.Errorf("hints: %v", found)
	}
	ami.Secret = "wrong"
	if _, err := readHints(ctx, ami, 5*time.Second); err == nil || !strings.Contains(err.Error(), "login as sidecar refused") {
		t.Errorf("a wrong password: %v", err)
	}
}
