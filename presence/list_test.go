package presence

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
)

// listDir is a directory of three people and two lists: "desk" (debbie
// by id, bob by extension) and "sales", a group.
func listDir(t testing.TB, lists ...bridge.List) *bridge.Directory {
	t.Helper()
	if lists == nil {
		lists = []bridge.List{
			{Name: "desk", Display: "Front desk", Members: []string{"debbie", "101"}},
			{Name: "sales", Group: "sales"},
		}
	}
	dir, err := bridge.NewDirectory([]bridge.User{
		{ID: "debbie", Name: "Debbie Harry", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}},
		{ID: "bob", Name: "Bob Marley", Extensions: []string{"101"}, Groups: []string{"sales"},
			Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/101"}}},
		{ID: "carol", Name: "Carol King", Extensions: []string{"102"}, Groups: []string{"sales"},
			Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/102"}}},
	}, lists...)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// listAccept is what phones send to a list (as in Asterisk's fixtures).
const listAcceptDialog = "application/rlmi+xml, multipart/related, application/dialog-info+xml"

func eventlist() sip.Header { return sip.NewHeader("Supported", "eventlist") }

// rlmi is an RLMI document as a phone reads it.
type rlmi struct {
	XMLName   xml.Name `xml:"urn:ietf:params:xml:ns:rlmi list"`
	URI       string   `xml:"uri,attr"`
	Version   int      `xml:"version,attr"`
	FullState bool     `xml:"fullState,attr"`
	Name      string   `xml:"name"`
	Resources []struct {
		URI      string `xml:"uri,attr"`
		Name     string `xml:"name"`
		Instance struct {
			ID     string `xml:"id,attr"`
			State  string `xml:"state,attr"`
			Reason string `xml:"reason,attr"`
			CID    string `xml:"cid,attr"`
		} `xml:"instance"`
	} `xml:"resource"`
}

// rlsNotify is a list NOTIFY taken apart: its RLMI and each member's
// document by resource URI.
type rlsNotify struct {
	req  *sip.Request
	list rlmi
	docs map[string]string // resource URI → its part's body
	kind map[string]string // resource URI → its part's Content-Type
}

// member returns the names of the resources the NOTIFY carries.
func (n *rlsNotify) uris() []string {
	var out []string
	for _, r := range n.list.Resources {
		out = append(out, r.URI)
	}
	return out
}

// parseRLS reads a list NOTIFY as a phone must (RFC 4662 and what
// Asterisk's lists taught phones to rely on) and fails on anything that
// breaks it: Require: eventlist, multipart/related of type RLMI with the
// RLMI part first, each part's Content-Length right, every instance's
// cid naming a part, every part's entity its resource's URI.
func parseRLS(t testing.TB, req *sip.Request) *rlsNotify {
	t.Helper()
	if !strings.Contains(header(req, "Require"), "eventlist") {
		t.Fatalf("list NOTIFY without Require: eventlist:\n%s", req)
	}
	mt, params, err := mime.ParseMediaType(header(req, "Content-Type"))
	if err != nil || mt != "multipart/related" || params["type"] != "application/rlmi+xml" || params["boundary"] == "" {
		t.Fatalf("list NOTIFY Content-Type %q (%v)", header(req, "Content-Type"), err)
	}
	mr := multipart.NewReader(bytes.NewReader(req.Body()), params["boundary"])
	n := &rlsNotify{req: req, docs: map[string]string{}, kind: map[string]string{}}
	byCID := map[string][2]string{}
	for i := 0; ; i++ {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("multipart body: %v\n%s", err, req.Body())
		}
		b, _ := io.ReadAll(part)
		if cl := part.Header.Get("Content-Length"); cl != "" {
			if want, _ := strconv.Atoi(strings.TrimSpace(cl)); want != len(b) {
				t.Fatalf("part %d: Content-Length %s, body %d bytes", i, cl, len(b))
			}
		}
		ct := part.Header.Get("Content-Type")
		cid := strings.Trim(part.Header.Get("Content-ID"), "<>")
		if i == 0 {
			if ct != "application/rlmi+xml" {
				t.Fatalf("first part is %q, not the RLMI", ct)
			}
			if err := xml.Unmarshal(b, &n.list); err != nil {
				t.Fatalf("RLMI: %v\n%s", err, b)
			}
			continue
		}
		byCID[cid] = [2]string{ct, string(b)}
	}
	for _, r := range n.list.Resources {
		if r.Instance.CID == "" {
			continue
		}
		p, ok := byCID[r.Instance.CID]
		if !ok {
			t.Fatalf("instance cid %q names no part", r.Instance.CID)
		}
		if !strings.Contains(p[1], `entity="`+r.URI+`"`) {
			t.Fatalf("part of %s has another entity:\n%s", r.URI, p[1])
		}
		n.kind[r.URI], n.docs[r.URI] = p[0], p[1]
		delete(byCID, r.Instance.CID)
	}
	if len(byCID) > 0 {
		t.Fatalf("parts no instance names: %v", byCID)
	}
	return n
}

// docVersion is the version of a dialog-info document.
func docVersion(t testing.TB, doc string) int {
	t.Helper()
	i := strings.Index(doc, "<dialog-info")
	j := strings.Index(doc[i:], ` version="`)
	if i < 0 || j < 0 {
		t.Fatalf("no dialog-info version in:\n%s", doc)
	}
	rest := doc[i+j+len(` version="`):]
	v, err := strconv.Atoi(rest[:strings.IndexByte(rest, '"')])
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAsteriskListFixturesPassOurReader: the reader the tests judge our
// lists with takes every NOTIFY Asterisk's own list server sent (so it
// asks only what phones built for those rely on).
func TestAsteriskListFixturesPassOurReader(t *testing.T) {
	files, _ := filepath.Glob("../../shared/fixtures/asterisk-native-rls/rls-*-0[1-6]-*.txt")
	if len(files) < 12 {
		t.Fatalf("fixtures: found %d files", len(files))
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := sip.ParseMessage(raw)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		n := parseRLS(t, msg.(*sip.Request))
		if len(n.list.Resources) == 0 || len(n.docs) != len(n.list.Resources) {
			t.Errorf("%s: %d resources, %d documents", filepath.Base(f), len(n.list.Resources), len(n.docs))
		}
	}
}

// TestListSubscription: a SUBSCRIBE to a list with Supported: eventlist
// gets 200 with Require: eventlist; the first NOTIFY is the full list,
// members in list order, labelled with their names; a change sends only
// that member (partial), a refresh the full list again; RLMI versions go
// up by one per NOTIFY and each member's document version grows every
// time it is sent (Asterisk repeats it in full-state NOTIFYs); instance
// ids stay the same.
func TestListSubscription(t *testing.T) {
	env := newEnvDir(t, listDir(t), trusted)
	p := newPhone(t, "UDP")
	res, d := p.subscribe(env.udp, subReq{user: "desk", event: "dialog", expires: 600, accept: listAcceptDialog,
		headers: []sip.Header{eventlist()}})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE to the list got %d %s", res.StatusCode, res.Reason)
	}
	if !strings.Contains(header(res, "Require"), "eventlist") {
		t.Errorf("200 without Require: eventlist:\n%s", res)
	}
	first := parseRLS(t, p.nextNotify(2*time.Second))
	host := d.uri.Host + ":" + strconv.Itoa(d.uri.Port)
	wantURIs := []string{"sip:100@" + host, "sip:101@" + host}
	if !first.list.FullState || first.list.Version != 0 || strings.Join(first.uris(), " ") != strings.Join(wantURIs, " ") {
		t.Fatalf("first NOTIFY: full %v version %d members %v, want full, 0, %v", first.list.FullState, first.list.Version, first.uris(), wantURIs)
	}
	if first.list.URI != "sip:desk@"+host || first.list.Name != "Front desk" {
		t.Errorf("list uri %q name %q", first.list.URI, first.list.Name)
	}
	if first.list.Resources[0].Name != "Debbie Harry" || first.list.Resources[1].Name != "Bob Marley" {
		t.Errorf("member names %q, %q", first.list.Resources[0].Name, first.list.Resources[1].Name)
	}
	for _, u := range wantURIs {
		if first.kind[u] != "application/dialog-info+xml" || docVersion(t, first.docs[u]) != 0 {
			t.Errorf("%s: %s version %d", u, first.kind[u], docVersion(t, first.docs[u]))
		}
	}
	if got := env.srv.Watchers("debbie"); got != 1 {
		t.Errorf("debbie has %d watchers, want the list's 1", got)
	}

	env.bridge.Apply(ringing("200"))
	ring := parseRLS(t, p.nextNotify(2*time.Second))
	if ring.list.FullState || ring.list.Version != 1 || len(ring.list.Resources) != 1 || ring.list.Resources[0].URI != wantURIs[0] {
		t.Fatalf("ringing: full %v version %d members %v, want partial, 1, only debbie", ring.list.FullState, ring.list.Version, ring.uris())
	}
	doc := ring.docs[wantURIs[0]]
	if !strings.Contains(doc, "<state>early</state>") || !strings.Contains(doc, `call-id="abc@pbx"`) || docVersion(t, doc) != 1 {
		t.Errorf("ringing member document:\n%s", doc)
	}
	if ring.list.Resources[0].Instance.ID != first.list.Resources[0].Instance.ID {
		t.Errorf("instance id changed: %q then %q", first.list.Resources[0].Instance.ID, ring.list.Resources[0].Instance.ID)
	}

	if res := p.refresh(d, 600); res.StatusCode != 200 || !strings.Contains(header(res, "Require"), "eventlist") {
		t.Fatalf("refresh got %d (Require %q)", res.StatusCode, header(res, "Require"))
	}
	full := parseRLS(t, p.nextNotify(2*time.Second))
	if !full.list.FullState || full.list.Version != 2 || len(full.list.Resources) != 2 {
		t.Fatalf("refresh: full %v version %d members %v", full.list.FullState, full.list.Version, full.uris())
	}
	if v0, v1 := docVersion(t, full.docs[wantURIs[0]]), docVersion(t, full.docs[wantURIs[1]]); v0 != 2 || v1 != 1 {
		t.Errorf("member versions after refresh %d, %d; want 2 (sent three times) and 1 (twice)", v0, v1)
	}

	if res := p.refresh(d, 0); res.StatusCode != 200 {
		t.Fatalf("unsubscribe got %d", res.StatusCode)
	}
	last := parseRLS(t, p.nextNotify(2*time.Second))
	if st := header(last.req, "Subscription-State"); st != "terminated" {
		t.Errorf("final NOTIFY Subscription-State %q", st)
	}
	for _, r := range last.list.Resources {
		if r.Instance.State != "terminated" {
			t.Errorf("final NOTIFY: %s instance %s", r.URI, r.Instance.State)
		}
	}
	if got := env.srv.Watchers("debbie"); got != 0 {
		t.Errorf("debbie has %d watchers after the unsubscribe", got)
	}
}

// TestListBatchesChanges: changes of several members within the window
// go in one partial NOTIFY; a member that starts ringing is not held
// back by it.
func TestListBatchesChanges(t *testing.T) {
	env := newEnvDir(t, listDir(t), trusted, func(o *Options) { o.Coalesce = 3 * time.Second })
	p := newPhone(t, "UDP")
	res, d := p.subscribe(env.udp, subReq{user: "sales", event: "dialog", expires: 600, accept: listAcceptDialog,
		headers: []sip.Header{eventlist()}})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE got %d", res.StatusCode)
	}
	first := parseRLS(t, p.nextNotify(2*time.Second))
	if len(first.list.Resources) != 2 {
		t.Fatalf("sales members %v", first.uris())
	}
	// Within the window of the first NOTIFY: both wait for its end and
	// go together.
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/101", State: bridge.DeviceInUse})
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/102", State: bridge.DeviceInUse})
	both := parseRLS(t, p.nextNotify(6*time.Second))
	if both.list.FullState || len(both.list.Resources) != 2 || both.list.Version != 1 {
		t.Fatalf("batched NOTIFY: full %v version %d members %v, want one partial with both", both.list.FullState, both.list.Version, both.uris())
	}
	// Ringing within the next window goes at once: long before it ends.
	host := d.uri.Host + ":" + strconv.Itoa(d.uri.Port)
	start := time.Now()
	env.bridge.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "c9", Device: "PJSIP/102",
		Direction: bridge.Incoming, State: bridge.CallEarly, Remote: bridge.Party{Number: "555"}, Started: time.Now()}})
	ring := parseRLS(t, p.nextNotify(6*time.Second))
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("ringing waited %v for the batch window", waited)
	}
	if len(ring.list.Resources) != 1 || ring.list.Resources[0].URI != "sip:102@"+host || !strings.Contains(ring.docs["sip:102@"+host], "early") {
		t.Errorf("ringing NOTIFY members %v:\n%s", ring.uris(), ring.req.Body())
	}
}

// TestListRefusals: RFC 4662's answers — no Supported: eventlist gets 421
// with Require: eventlist; an Accept without the multipart and RLMI types
// gets 406 naming them; a package lists are not served in gets 489.
func TestListRefusals(t *testing.T) {
	env := newEnvDir(t, listDir(t), trusted)
	p := newPhone(t, "UDP")
	res, _ := p.subscribe(env.udp, subReq{user: "desk", event: "dialog", expires: 600, accept: listAcceptDialog})
	if res.StatusCode != 421 || header(res, "Require") != "eventlist" {
		t.Errorf("without Supported: eventlist: %d, Require %q; want 421 eventlist", res.StatusCode, header(res, "Require"))
	}
	res, _ = p.subscribe(env.udp, subReq{user: "desk", event: "dialog", expires: 600, accept: "application/dialog-info+xml",
		headers: []sip.Header{eventlist()}})
	if res.StatusCode != 406 || !strings.Contains(header(res, "Accept"), "multipart/related") {
		t.Errorf("Accept without multipart: %d, Accept %q; want 406", res.StatusCode, header(res, "Accept"))
	}
	res, _ = p.subscribe(env.udp, subReq{user: "desk", event: "as-feature-event", expires: 600, headers: []sip.Header{eventlist()}})
	if res.StatusCode != 489 || header(res, "Allow-Events") != "presence, dialog" {
		t.Errorf("as-feature-event to a list: %d, Allow-Events %q; want 489", res.StatusCode, header(res, "Allow-Events"))
	}
	if total, _ := env.srv.Subscriptions(); total != 0 {
		t.Errorf("%d subscriptions left by refusals", total)
	}
}

// TestPresenceList: Event: presence over a list carries a PIDF per member.
func TestPresenceList(t *testing.T) {
	env := newEnvDir(t, listDir(t), trusted)
	p := newPhone(t, "TCP")
	res, _ := p.subscribe(env.tcp, subReq{user: "sales", event: "presence", expires: 600,
		accept: "application/rlmi+xml, multipart/related, application/pidf+xml", headers: []sip.Header{eventlist()}})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE got %d", res.StatusCode)
	}
	n := parseRLS(t, p.nextNotify(2*time.Second))
	if len(n.docs) != 2 {
		t.Fatalf("members %v", n.uris())
	}
	for u, k := range n.kind {
		if k != "application/pidf+xml" || !strings.Contains(n.docs[u], "<basic>open</basic>") {
			t.Errorf("%s: %s\n%s", u, k, n.docs[u])
		}
	}
}

// TestListFollowsTheDirectory: a reload that adds a member sends the full
// list with it; a user removed from the directory leaves the list (it
// goes on); a list removed ends its subscriptions with noresource.
func TestListFollowsTheDirectory(t *testing.T) {
	env := newEnvDir(t, listDir(t), trusted)
	p := newPhone(t, "UDP")
	res, _ := p.subscribe(env.udp, subReq{user: "desk", event: "dialog", expires: 600, accept: listAcceptDialog,
		headers: []sip.Header{eventlist()}})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE got %d", res.StatusCode)
	}
	parseRLS(t, p.nextNotify(2*time.Second))

	env.bridge.SetDirectory(listDir(t, bridge.List{Name: "desk", Members: []string{"debbie", "bob", "carol"}}))
	env.srv.DirectoryChanged()
	n := parseRLS(t, p.nextNotify(2*time.Second))
	if !n.list.FullState || len(n.list.Resources) != 3 || n.list.Resources[2].Name != "Carol King" || n.list.Name != "desk" {
		t.Fatalf("after adding carol: full %v members %v name %q", n.list.FullState, n.uris(), n.list.Name)
	}
	if got := env.srv.Watchers("carol"); got != 1 {
		t.Errorf("carol has %d watchers, want the list's 1", got)
	}
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/102", State: bridge.DeviceInUse})
	if n := parseRLS(t, p.nextNotify(2*time.Second)); len(n.list.Resources) != 1 || !strings.Contains(n.list.Resources[0].URI, "sip:102@") {
		t.Errorf("carol's change: members %v", n.uris())
	}

	// Bob leaves the company: the list goes on without him (the bridge
	// alone tells the server; no DirectoryChanged call).
	dir, err := bridge.NewDirectory([]bridge.User{
		{ID: "debbie", Name: "Debbie Harry", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}},
		{ID: "carol", Name: "Carol King", Extensions: []string{"102"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/102"}}},
	}, bridge.List{Name: "desk", Members: []string{"debbie", "carol"}})
	if err != nil {
		t.Fatal(err)
	}
	env.bridge.SetDirectory(dir)
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := parseRLS(t, p.nextNotify(time.Until(deadline)))
		if n.list.FullState && len(n.list.Resources) == 2 {
			if strings.Contains(strings.Join(n.uris(), " "), "sip:101@") {
				t.Fatalf("bob still listed: %v", n.uris())
			}
			break
		}
	}
	if st := header(p.notifies2(), "Subscription-State"); st != "" {
		t.Errorf("the list subscription ended: %s", st)
	}

	// The list itself goes.
	env.bridge.SetDirectory(listDir(t, bridge.List{Name: "other", Members: []string{"debbie"}}))
	env.srv.DirectoryChanged()
	last := p.nextNotify(2 * time.Second)
	if st := header(last, "Subscription-State"); st != "terminated;reason=noresource" {
		t.Errorf("list removed: Subscription-State %q", st)
	}
	waitUntil(t, 2*time.Second, "subscription gone", func() bool { total, _ := env.srv.Subscriptions(); return total == 0 })
}

// notifies2 returns a NOTIFY waiting, or an empty request when none is.
func (p *phone) notifies2() *sip.Request {
	select {
	case n := <-p.notifies:
		return n
	default:
		return sip.NewRequest(sip.NOTIFY, sip.Uri{})
	}
}

// TestListSubscriptionSurvivesARestart: a list subscription is saved with
// its list; a server started from the store sends the full list in the
// same dialog, CSeq, RLMI version and every member's version above what
// was sent before, and takes the refresh.
func TestListSubscriptionSurvivesARestart(t *testing.T) {
	store := newMemStore()
	flush := func(o *Options) { o.Store, o.FlushInterval = store, 50*time.Millisecond }
	env := newEnvDir(t, listDir(t), trusted, flush)
	p := newPhone(t, "UDP")
	res, d := p.subscribe(env.udp, subReq{user: "desk", event: "dialog", expires: 600, accept: listAcceptDialog,
		headers: []sip.Header{eventlist()}})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE got %d", res.StatusCode)
	}
	parseRLS(t, p.nextNotify(2*time.Second))
	env.bridge.Apply(ringing("200"))
	before := parseRLS(t, p.nextNotify(2*time.Second))
	cseq := cseqOf(before.req)
	waitUntil(t, 2*time.Second, "list subscription saved", func() bool {
		s := store.copy()
		return len(s.Subscriptions) == 1 && s.Subscriptions[0].List == "desk"
	})
	crashed := store.copy()

	env2 := restartEnv(t, env, func(o *Options) { trusted(o); flush(o); o.Restore = crashed })
	if by := env2.srv.SubscriptionsByKind(); by[SubscriptionKind{Package: PackageDialog, Transport: "UDP", List: true}] != 1 {
		t.Fatalf("restored: %v", by)
	}
	if got := env2.srv.Watchers("bob"); got != 1 {
		t.Errorf("bob has %d watchers after the restart", got)
	}
	env2.srv.NotifyRestored()
	after := parseRLS(t, p.nextNotify(3*time.Second))
	if after.req.CallID().Value() != d.callID || cseqOf(after.req) <= cseq {
		t.Fatalf("after restart: Call-ID %s CSeq %d (before %d)", after.req.CallID().Value(), cseqOf(after.req), cseq)
	}
	if !after.list.FullState || len(after.list.Resources) != 2 || after.list.Version <= before.list.Version {
		t.Errorf("after restart: full %v members %v version %d (before %d)", after.list.FullState, after.uris(), after.list.Version, before.list.Version)
	}
	for u, doc := range after.docs {
		if v := docVersion(t, doc); v <= 1 {
			t.Errorf("%s: document version %d after restart, not above what was sent", u, v)
		}
	}
	if res := p.refresh(d, 600); res.StatusCode != 200 {
		t.Errorf("refresh after restart got %d", res.StatusCode)
	}
}

// TestListSubscriberIsAuthenticatedAndShownAsWatcher: a list is no way
// around authentication (401 first, 200 with the password), and its
// subscriber is among each member's watchers in watcher info; when it
// unsubscribes, each member's watcher info says so.
func TestListSubscriberIsAuthenticatedAndShownAsWatcher(t *testing.T) {
	env := newEnvDir(t, listDir(t))
	own := newPhone(t, "UDP")
	own.user, own.password = "debbie", "d-secret"
	if res, _ := own.subscribe(env.udp, subReq{user: "100", event: "presence.winfo", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("presence.winfo: %d", res.StatusCode)
	}
	if d := readWinfo(t, own.nextNotify(3*time.Second).Body()); len(d.presenceWatchers()) != 0 {
		t.Fatalf("watchers before the list: %v", d.presenceWatchers())
	}

	p := newPhone(t, "UDP")
	req := subReq{user: "desk", event: "presence", expires: 600,
		accept: "application/rlmi+xml, multipart/related, application/pidf+xml", headers: []sip.Header{eventlist()}}
	if res, _ := p.subscribe(env.udp, req); res.StatusCode != 401 {
		t.Fatalf("list SUBSCRIBE without credentials: %d, want 401", res.StatusCode)
	}
	p.user, p.password = "bob", "b-secret"
	res, d := p.subscribe(env.udp, req)
	if res.StatusCode != 200 {
		t.Fatalf("list SUBSCRIBE with credentials: %d", res.StatusCode)
	}
	parseRLS(t, p.nextNotify(2*time.Second))
	var id string
	for _, s := range env.srv.subs.all() {
		if s.List == "desk" {
			id = s.ID
		}
	}
	w := readWinfo(t, own.notifyWhere(id, 3*time.Second).Body()).presenceWatchers()
	if w[id] != "active/subscribe" {
		t.Errorf("debbie's watchers %v, want the list's %s active", w, id)
	}
	if res := p.refresh(d, 0); res.StatusCode != 200 {
		t.Fatalf("unsubscribe: %d", res.StatusCode)
	}
	for {
		n := own.nextNotify(3 * time.Second)
		if w := readWinfo(t, n.Body()).presenceWatchers(); w[id] != "" && w[id] != "active/subscribe" {
			if w[id] != "terminated/timeout" {
				t.Errorf("list watcher after unsubscribe: %s", w[id])
			}
			break
		}
	}
}

// TestBigListReachesAUDPPhoneWhole: a list whose full state is far larger
// than a datagram reaches a phone that takes no TCP whole: a full-state
// RLMI naming every member, then partial NOTIFYs, each under the datagram
// size, until every member's full document (not a compact one) has
// arrived. Before, the whole list was rendered compact at well over a
// datagram, failed with EMSGSIZE at every try, and the phone waited on a
// state it never got. Both with a TCP listener (tried first, refused by
// the phone) and with none.
func TestBigListReachesAUDPPhoneWhole(t *testing.T) {
	const members = 150
	var users []bridge.User
	for i := range members {
		users = append(users, bridge.User{ID: fmt.Sprintf("u%03d", i), Name: fmt.Sprintf("Member %d", i),
			Extensions: []string{strconv.Itoa(2000 + i)}, Groups: []string{"big"},
			Devices: []bridge.DeviceRef{{Source: "pbx", Device: fmt.Sprintf("PJSIP/%d", 2000+i)}}})
	}
	dir, err := bridge.NewDirectory(users, bridge.List{Name: "all", Group: "big"})
	if err != nil {
		t.Fatal(err)
	}
	caller := strings.Repeat("A caller with a long name ", 8)
	// The phone's SIP stack (sipgo) reads datagrams of 32 KiB at most, as
	// an administrator learns of theirs and sets policy.max_udp_notify.
	const limit = 30000
	small := func(o *Options) { o.MaxUDPNotify = limit }
	for name, opts := range map[string][]envOption{
		"tcp listener": {trusted, small},
		"udp only": {trusted, small, func(o *Options) {
			o.Listen = []Listener{{Transport: "udp", Address: "127.0.0.1:0"}}
		}},
	} {
		t.Run(name, func(t *testing.T) {
			env := newEnvDir(t, dir, opts...)
			for i := range members {
				env.bridge.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: fmt.Sprintf("c%d", i),
					Device: fmt.Sprintf("PJSIP/%d", 2000+i), Direction: bridge.Incoming, State: bridge.CallConfirmed,
					Remote: bridge.Party{Number: strconv.Itoa(5000 + i), Name: caller}, CallID: fmt.Sprintf("call-%d@pbx", i),
					LocalTag: "lt", RemoteTag: "rt", Started: time.Now()}})
			}
			p := newPhone(t, "UDP")
			res, d := p.subscribe(env.udp, subReq{user: "all", event: "dialog", expires: 600, accept: listAcceptDialog,
				headers: []sip.Header{eventlist()}})
			if res.StatusCode != 200 {
				t.Fatalf("SUBSCRIBE got %d", res.StatusCode)
			}
			host := d.uri.Host + ":" + strconv.Itoa(d.uri.Port)
			got := map[string]string{}
			notifies, fullBytes := 0, 0
			for len(got) < members {
				n := parseRLS(t, p.nextNotify(5*time.Second))
				if size := len(n.req.Body()); size > limit-500 {
					t.Fatalf("NOTIFY %d: a body of %d bytes", notifies, size)
				}
				if n.list.Version != notifies {
					t.Fatalf("NOTIFY %d has RLMI version %d", notifies, n.list.Version)
				}
				if notifies == 0 && (!n.list.FullState || len(n.list.Resources) != members) {
					t.Fatalf("the first NOTIFY: fullState %v, %d members named, want every one of %d", n.list.FullState, len(n.list.Resources), members)
				}
				if notifies > 0 && n.list.FullState {
					t.Fatalf("NOTIFY %d is a full state again", notifies)
				}
				for uri, doc := range n.docs {
					if !strings.Contains(doc, "<state>confirmed</state>") || !strings.Contains(doc, strings.TrimSpace(caller)) {
						t.Fatalf("%s: not its full document:\n%s", uri, doc)
					}
					if _, dup := got[uri]; dup {
						t.Errorf("%s sent twice", uri)
					}
					got[uri] = doc
					fullBytes += len(doc)
				}
				notifies++
			}
			t.Logf("%d members' documents (%d bytes) in %d NOTIFYs", len(got), fullBytes, notifies)
			if notifies < 2 || fullBytes < MaxDatagram {
				t.Fatalf("%d NOTIFYs carrying %d bytes of documents: the list was not larger than a datagram", notifies, fullBytes)
			}
			for i := range members {
				if _, ok := got[fmt.Sprintf("sip:%d@%s", 2000+i, host)]; !ok {
					t.Errorf("member %d never sent", i)
				}
			}
			if w := env.srv.Watchers("u000"); w != 1 {
				t.Errorf("u000 has %d watchers", w)
			}
			// And the list goes on as any other: a change is one partial.
			env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "c7"})
			n := parseRLS(t, p.nextNotify(5*time.Second))
			if n.list.FullState || len(n.list.Resources) != 1 || n.list.Resources[0].URI != fmt.Sprintf("sip:2007@%s", host) {
				t.Errorf("after a hang-up: full %v members %v", n.list.FullState, n.uris())
			}
			// The final NOTIFY fits too, and names every member ended.
			if res := p.refresh(d, 0); res.StatusCode != 200 {
				t.Fatalf("unsubscribe got %d", res.StatusCode)
			}
			last := parseRLS(t, p.nextNotify(5*time.Second))
			if st := header(last.req, "Subscription-State"); st != "terminated" || len(last.list.Resources) != members ||
				len(last.req.Body()) > limit {
				t.Errorf("final NOTIFY: %s, %d members, %d bytes", st, len(last.list.Resources), len(last.req.Body()))
			}
		})
	}
}
