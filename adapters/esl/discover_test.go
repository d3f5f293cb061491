package esl

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/adapters/pbxtest"
)

// TestUserListReadsTheSwitchsDirectory: list_users as the real
// FreeSWITCH 1.10.12 of ../shared/pbx answers it (vanilla directory:
// 1000-1019 in domain 127.0.0.1, some in sales, billing or support too)
// is twenty users, each once with all its groups and its caller id; the
// domain's "default" row is no one.
func TestUserListReadsTheSwitchsDirectory(t *testing.T) {
	body, err := os.ReadFile("testdata/list_users.txt")
	if err != nil {
		t.Fatal(err)
	}
	users, err := parseUserList("fs", body)
	if err != nil {
		t.Fatal(err)
	}
	checkVanillaDirectory(t, users)
}

func checkVanillaDirectory(t *testing.T, users []adapters.DiscoveredUser) {
	t.Helper()
	if len(users) != 20 {
		t.Fatalf("%d users, want 20 (1000-1019): %+v", len(users), users)
	}
	byExt := map[string]adapters.DiscoveredUser{}
	for _, u := range users {
		byExt[u.Extension] = u
	}
	u := byExt["1000"]
	if u.PBX != "fs" || u.Domain != "127.0.0.1" || u.Device != "1000@127.0.0.1" || u.Name != "Extension 1000" ||
		!slices.Equal(u.Groups, []string{"default", "sales"}) {
		t.Errorf("1000: %+v", u)
	}
	if g := byExt["1014"].Groups; !slices.Equal(g, []string{"default", "support"}) {
		t.Errorf("1014's groups: %v", g)
	}
	if _, ok := byExt["default"]; ok {
		t.Error("the domain's default row became a user")
	}
}

// TestUserListRefusesWhatItCannotRead: an answer without the columns
// needed, or with short lines, is an error, not a smaller directory.
func TestUserListRefusesWhatItCannotRead(t *testing.T) {
	for name, body := range map[string]string{
		"no header":      "1000|default|127.0.0.1\n+OK\n",
		"no domain":      "userid|context|group|effective_caller_id_name|effective_caller_id_number\n+OK\n",
		"a short line":   "userid|context|domain|group|effective_caller_id_name|effective_caller_id_number\n1000|default\n+OK\n",
		"an error reply": "-ERR no reply\n",
	} {
		if users, err := parseUserList("fs", []byte(body)); err == nil {
			t.Errorf("%s: read as %+v", name, users)
		}
	}
	// Another order of columns reads the same.
	users, err := parseUserList("fs", []byte("domain|userid|context|group|effective_caller_id_number|effective_caller_id_name\n"+
		"example.com|1001|default|sales|1001|Ann\n+OK\n"))
	if err != nil || len(users) != 1 || users[0].Name != "Ann" || users[0].Device != "1001@example.com" {
		t.Errorf("reordered columns: %+v, %v", users, err)
	}
}

// TestDiscoverAsksTheRealSwitch: Discover on the real FreeSWITCH, with
// the event socket's own login, finds the vanilla directory.
func TestDiscoverAsksTheRealSwitch(t *testing.T) {
	fs := pbxtest.StartFreeSWITCH(t, pbxtest.Config{})
	a, err := New(adapters.Connection{Name: "fs", Address: fs.ESL(), Password: pbxtest.ESLPassword}, Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	users, err := a.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkVanillaDirectory(t, users)
	// The phones' logins, as the loaded directory has them ($${default_password}).
	secrets, err := a.SIPPasswords(ctx, users)
	if err != nil {
		t.Fatal(err)
	}
	if s := secrets["1005@"+pbxtest.Domain]; len(secrets) != 20 || s.Username != "1005" || s.Password != "1234" {
		t.Errorf("%d logins; 1005's: %+v", len(secrets), s)
	}
	// A wrong password says so.
	b, _ := New(adapters.Connection{Name: "fs", Address: fs.ESL(), Password: "wrong"}, Config{}, nil, nil)
	if _, err := b.Discover(ctx); err == nil || !strings.Contains(err.Error(), "password") {
		t.Errorf("with a wrong password: %v", err)
	}
}

func TestDomainSecretsSkipPointersAndHashes(t *testing.T) {
	got, err := parseDomainSecrets([]byte(`<domain name="d"><users><user id="9"><params><param name="password" value="nine"/></params></user></users>
<groups><group name="default"><users>
<user id="1"><params><param name="password" value="one"/><param name="vm-password" value="11"/></params></user>
<user id="2"><params><param name="a1-hash" value="c6440e5de50b403206989679159de89a"/></params></user>
</users></group><group name="sales"><users><user id="1" type="pointer"/></users></group></groups></domain>`))
	if err != nil || len(got) != 2 || got["1"] != "one" || got["9"] != "nine" {
		t.Errorf("%v %v", got, err)
	}
	if _, err := parseDomainSecrets([]byte("-ERR nothing found")); err == nil {
		t.Error("an error answer is read as a domain")
	}
}
