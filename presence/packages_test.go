package presence

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence/body"
)

func TestPackagesNegotiateTheirDocuments(t *testing.T) {
	ps := makePackages()
	cases := []struct {
		pkg    Package
		accept string
		want   string // "" for 406
	}{
		{PackagePresence, "", body.TypePIDF},
		{PackagePresence, "application/pidf+xml", body.TypePIDF},
		{PackagePresence, "application/xpidf+xml", body.TypeXPIDF},
		{PackagePresence, "application/xpidf+xml, application/pidf+xml", body.TypePIDF},
		{PackagePresence, "application/*", body.TypePIDF},
		{PackagePresence, "text/plain", ""},
		{PackageDialog, "", body.TypeDialogInfo},
		{PackageDialog, "application/dialog-info+xml;q=1", body.TypeDialogInfo},
		{PackageDialog, "*/*", body.TypeDialogInfo},
		{PackageDialog, "application/pidf+xml", ""},
	}
	for _, c := range cases {
		p, ok := ps.lookup(c.pkg)
		if !ok {
			t.Fatalf("no package %s", c.pkg)
		}
		got, ok := p.Negotiate(c.accept)
		if (c.want == "") == ok || got != c.want {
			t.Errorf("%s with Accept %q: %q %v, want %q", c.pkg, c.accept, got, ok, c.want)
		}
	}
	if ps.allowEvents != "presence, dialog, as-feature-event, presence.winfo" || !strings.Contains(ps.accept, body.TypeXPIDF) {
		t.Errorf("Allow-Events %q, Accept %q", ps.allowEvents, ps.accept)
	}
	if _, ok := ps.lookup("message-summary"); ok {
		t.Error("a package not served was found")
	}
}

// TestSavedPackagesLoadByTokenAndByOldNumber: records are written with the
// package's token; those written before (a number) still load.
func TestSavedPackagesLoadByTokenAndByOldNumber(t *testing.T) {
	for in, want := range map[string]Package{`0`: PackagePresence, `1`: PackageDialog,
		`"dialog"`: PackageDialog, `"presence"`: PackagePresence, `"message-summary"`: "message-summary"} {
		var p Package
		if err := json.Unmarshal([]byte(in), &p); err != nil || p != want {
			t.Errorf("%s read as %q, %v; want %q", in, p, err, want)
		}
	}
	var p Package
	if err := json.Unmarshal([]byte(`7`), &p); err == nil {
		t.Error("an unknown number was read as a package")
	}
	b, _ := json.Marshal(SavedSubscription{Package: PackageDialog})
	if !strings.Contains(string(b), `"package":"dialog"`) {
		t.Errorf("saved as %s", b)
	}

	// An old record of a dialog subscription comes back as one, with its
	// document type; an unknown token is not restored.
	old := `{"id":"x1","call_id":"c","remote_tag":"r","user":"debbie","entity":"sip:100@x","package":1,` +
		`"accept":"application/dialog-info+xml","local_uri":"sip:100@x","remote_uri":"sip:w@x",` +
		`"target":"sip:w@127.0.0.1:5099","transport":"UDP","source":"127.0.0.1:5099","expires":"` +
		time.Now().Add(time.Hour).Format(time.RFC3339Nano) + `","remote_cseq":1,"cseq":5,"version":4}`
	var rec SavedSubscription
	if err := json.Unmarshal([]byte(old), &rec); err != nil {
		t.Fatal(err)
	}
	ps := makePackages()
	sub, err := restoredSubscription(&rec, ps, newInterner(internMaxBytes))
	if err != nil || sub.Package != PackageDialog || sub.MediaType != body.TypeDialogInfo || !sub.pkg.Versioned() {
		t.Fatalf("old dialog record restored as %v %q (%v)", sub.Package, sub.MediaType, err)
	}
	rec.Package = "message-summary"
	if _, err := restoredSubscription(&rec, ps, newInterner(internMaxBytes)); err == nil {
		t.Error("a record of a package not served was restored")
	}
}
