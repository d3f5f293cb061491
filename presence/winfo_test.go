package presence

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence/body"
)

// winfoDoc reads a watcherinfo document back.
type winfoDoc struct {
	XMLName xml.Name `xml:"urn:ietf:params:xml:ns:watcherinfo watcherinfo"`
	Version int      `xml:"version,attr"`
	State   string   `xml:"state,attr"`
	Lists   []struct {
		Package  string `xml:"package,attr"`
		Resource string `xml:"resource,attr"`
		Watchers []struct {
			ID     string `xml:"id,attr"`
			Status string `xml:"status,attr"`
			Event  string `xml:"event,attr"`
			URI    string `xml:",chardata"`
		} `xml:"watcher"`
	} `xml:"watcher-list"`
}

// presenceWatchers returns the watchers of the presence list as id → status/event.
func (d winfoDoc) presenceWatchers() map[string]string {
	out := map[string]string{}
	for _, l := range d.Lists {
		if l.Package == "presence" {
			for _, w := range l.Watchers {
				out[w.ID] = w.Status + "/" + w.Event
			}
		}
	}
	return out
}

// presenceWatcherURI is the URI the presence list gives for watcher id.
func (d winfoDoc) presenceWatcherURI(id string) string {
	for _, l := range d.Lists {
		for _, w := range l.Watchers {
			if l.Package == "presence" && w.ID == id {
				return strings.TrimSpace(w.URI)
			}
		}
	}
	return ""
}

func readWinfo(t *testing.T, b []byte) winfoDoc {
	t.Helper()
	var d winfoDoc
	if err := xml.Unmarshal(b, &d); err != nil {
		t.Fatalf("watcherinfo: %v\n%s", err, b)
	}
	return d
}

func TestWatcherInfoTellsAPersonWhoWatches(t *testing.T) {
	env := newEnv(t)
	own := newPhone(t, "UDP")
	own.user, own.password = "debbie", "d-secret"
	res, _ := own.subscribe(env.udp, subReq{user: "100", event: "presence.winfo", expires: 600})
	if res.StatusCode != 200 {
		t.Fatalf("presence.winfo: %d", res.StatusCode)
	}
	n := own.nextNotify(3 * time.Second)
	if header(n, "Content-Type") != body.TypeWatcherInfo {
		t.Fatalf("Content-Type %q", header(n, "Content-Type"))
	}
	d := readWinfo(t, n.Body())
	if d.State != "full" || len(d.presenceWatchers()) != 0 || len(d.Lists) != 2 {
		t.Fatalf("first document: %+v", d)
	}
	v0 := d.Version

	bob := newPhone(t, "UDP")
	bob.user, bob.password = "bob", "b-secret"
	res, bd := bob.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600})
	if res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	bob.nextNotify(3 * time.Second)
	d = readWinfo(t, own.nextNotify(3*time.Second).Body())
	ws := d.presenceWatchers()
	if len(ws) != 1 || d.Version <= v0 {
		t.Fatalf("after bob subscribed: %+v", d)
	}
	var bobID string
	for id, st := range ws {
		bobID = id
		if st != "active/subscribe" {
			t.Fatalf("bob's watcher: %s", st)
		}
	}
	// Bob is named as he authenticated, not as his From claims
	// (sip:watcher@127.0.0.1 here: any From can say anything).
	if uri := d.presenceWatcherURI(bobID); uri != "sip:bob@test.invalid" {
		t.Errorf("bob's watcher is named %q, want the identity he authenticated as", uri)
	}
	// The person's own state is no news here.
	env.bridge.Apply(ringing("101"))
	bob.nextNotify(3 * time.Second)
	own.noNotify(300 * time.Millisecond)

	// Bob leaves: shown terminated once, then gone.
	if res := bob.refresh(bd, 0); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	d = readWinfo(t, own.nextNotify(3*time.Second).Body())
	if st := d.presenceWatchers()[bobID]; st != "terminated/timeout" {
		t.Fatalf("bob after unsubscribing: %q in %+v", st, d)
	}
	carol := newPhone(t, "UDP")
	carol.user, carol.password = "bob", "b-secret"
	if res, _ := carol.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	d = readWinfo(t, own.nextNotify(3*time.Second).Body())
	if _, still := d.presenceWatchers()[bobID]; still {
		t.Fatalf("a watcher shown terminated stays listed: %+v", d)
	}
	dialogs := 0
	for _, l := range d.Lists {
		if l.Package == "dialog" {
			dialogs = len(l.Watchers)
		}
	}
	if dialogs != 1 {
		t.Fatalf("the busy-lamp watcher is not listed under dialog: %+v", d)
	}

	// Who watches debbie is debbie's business.
	other := newPhone(t, "UDP")
	other.user, other.password = "bob", "b-secret"
	if res, _ := other.subscribe(env.udp, subReq{user: "100", event: "presence.winfo", expires: 600}); res.StatusCode != 403 {
		t.Fatalf("bob watching debbie's watchers: %d, want 403", res.StatusCode)
	}
}

// TestWatcherInfoSurvivesARestart: a restored watcher-info subscription
// lists the watchers restored with it in its first NOTIFY.
func TestWatcherInfoSurvivesARestart(t *testing.T) {
	store := newMemStore()
	flush := func(o *Options) { o.Store, o.FlushInterval = store, 50*time.Millisecond }
	env := newEnv(t, trusted, flush)
	own := newPhone(t, "UDP")
	if res, _ := own.subscribe(env.udp, subReq{user: "100", event: "presence.winfo", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	own.nextNotify(3 * time.Second)
	w := newPhone(t, "UDP")
	if res, _ := w.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	own.nextNotify(3 * time.Second)
	waitUntil(t, 2*time.Second, "both subscriptions saved", func() bool { return store.count() == 2 })
	env2 := restartEnv(t, env, func(o *Options) { trusted(o); flush(o); o.Restore = store.copy() })
	env2.srv.NotifyRestored()
	n := own.notifyWhere("watcherinfo", 3*time.Second)
	if ws := readWinfo(t, n.Body()).presenceWatchers(); len(ws) != 1 {
		t.Fatalf("restored watcher-info lists %v, want the one restored watcher", ws)
	}
}
