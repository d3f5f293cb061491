package presence

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
)

// memStore is a Store in memory that applies batches as the bbolt one
// does; copy() is what a crash at that moment would leave.
type memStore struct {
	mu    sync.Mutex
	subs  map[string]SavedSubscription
	pubs  map[string]Publication
	binds map[string][]Binding
	saves int
	fail  int      // the next fail saves return an error
	gone  []string // every id deleted, in order
}

func newMemStore() *memStore {
	return &memStore{subs: map[string]SavedSubscription{}, pubs: map[string]Publication{}, binds: map[string][]Binding{}}
}

func (m *memStore) Save(b Batch) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail > 0 {
		m.fail--
		return errors.New("disk full")
	}
	m.saves++
	for _, s := range b.Subscriptions {
		m.subs[s.ID] = s
	}
	for _, id := range b.Unsubscribed {
		delete(m.subs, id)
		m.gone = append(m.gone, id)
	}
	for _, p := range b.Publications {
		m.pubs[p.ETag] = p
	}
	for _, tag := range b.Unpublished {
		delete(m.pubs, tag)
	}
	for u, bs := range b.Bindings {
		if len(bs) == 0 {
			delete(m.binds, u)
		} else {
			m.binds[u] = bs
		}
	}
	return nil
}

func (m *memStore) copy() *Saved {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := &Saved{}
	for _, s := range m.subs {
		out.Subscriptions = append(out.Subscriptions, s)
	}
	for _, p := range m.pubs {
		out.Publications = append(out.Publications, p)
	}
	for _, bs := range m.binds {
		out.Bindings = append(out.Bindings, bs...)
	}
	return out
}

func (m *memStore) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.subs)
}

func cseqOf(n *sip.Request) uint32 { return n.CSeq().SeqNo }

func versionOf(t *testing.T, n *sip.Request) int {
	t.Helper()
	b := string(n.Body())
	b = b[strings.Index(b, "<dialog-info")+1:]
	i := strings.Index(b, ` version="`)
	if i < 0 {
		t.Fatalf("no version in:\n%s", b)
	}
	b = b[i+len(` version="`):]
	v, err := strconv.Atoi(b[:strings.IndexByte(b, '"')])
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSubscriptionsSurviveACrash: subscriptions over UDP and TCP are
// saved within the flush interval; a second server started from what the
// store held at that moment (the first never flushed at exit: a crash)
// sends each subscriber a NOTIFY in the same dialog with a higher CSeq and
// version, and takes in-dialog refreshes with 200.
func TestSubscriptionsSurviveACrash(t *testing.T) {
	store := newMemStore()
	flush := func(o *Options) { o.Store, o.FlushInterval = store, 50*time.Millisecond }
	env := newEnv(t, trusted, flush)
	type watcher struct {
		p       *phone
		d       *dialog
		cseq    uint32
		version int
	}
	var ws []*watcher
	for _, tr := range []string{"UDP", "TCP"} {
		p := newPhone(t, tr)
		server := env.udp
		if tr == "TCP" {
			server = env.tcp
		}
		res, d := p.subscribe(server, subReq{user: "100", event: "dialog", expires: 600})
		if res.StatusCode != 200 {
			t.Fatalf("%s: SUBSCRIBE got %d", tr, res.StatusCode)
		}
		n := p.nextNotify(2 * time.Second)
		ws = append(ws, &watcher{p: p, d: d, cseq: cseqOf(n), version: versionOf(t, n)})
	}
	// A few changes, so that CSeq and version move on.
	env.bridge.Apply(ringing("200"))
	env.bridge.Apply(answered("200"))
	for _, w := range ws {
		n := w.p.notifyWhere("confirmed", 2*time.Second)
		w.cseq, w.version = cseqOf(n), versionOf(t, n)
	}
	if by := env.srv.SubscriptionsByKind(); by[SubscriptionKind{Package: PackageDialog, Transport: "UDP"}] != 1 || by[SubscriptionKind{Package: PackageDialog, Transport: "TCP"}] != 1 {
		t.Errorf("subscriptions by kind: %v", by)
	}
	waitUntil(t, 2*time.Second, "both subscriptions saved", func() bool { return store.count() == 2 })
	crashed := store.copy()

	// A new server on the same addresses, from what the store held.
	env2 := restartEnv(t, env, func(o *Options) { trusted(o); flush(o); o.Restore = crashed })
	if total, _ := env2.srv.Subscriptions(); total != 2 {
		t.Fatalf("%d subscriptions restored, want 2", total)
	}
	env2.bridge.Apply(answered("200"))
	if n := env2.srv.NotifyRestored(); n != 2 {
		t.Errorf("NotifyRestored sent %d, want 2", n)
	}
	for _, w := range ws {
		n := w.p.notifyWhere("confirmed", 3*time.Second)
		if n.CallID().Value() != w.d.callID {
			t.Errorf("%s: NOTIFY in another dialog: %s", w.p.transport, n.CallID().Value())
		}
		if tag, _ := n.From().Params.Get("tag"); tag != w.d.toTag {
			t.Errorf("%s: From tag %q, want our dialog's %q", w.p.transport, tag, w.d.toTag)
		}
		if got := cseqOf(n); got <= w.cseq {
			t.Errorf("%s: CSeq %d after restart, not above %d", w.p.transport, got, w.cseq)
		}
		if got := versionOf(t, n); got <= w.version {
			t.Errorf("%s: version %d after restart, not above %d", w.p.transport, got, w.version)
		}
		if res := w.p.refresh(w.d, 600); res.StatusCode != 200 {
			t.Errorf("%s: refresh after restart got %d, want 200", w.p.transport, res.StatusCode)
		}
	}
}

// restartEnv starts a second server on the first one's addresses after
// stopping the first.
func restartEnv(t *testing.T, old *testEnv, opts ...envOption) *testEnv {
	t.Helper()
	old.stop()
	return newEnvDir(t, old.bridge.Directory(), append([]envOption{func(o *Options) {
		o.Listen = []Listener{{Transport: "udp", Address: old.udp}, {Transport: "tcp", Address: old.tcp}}
	}}, opts...)...)
}

// TestPublicationsAndRegistrationsAreRestored: a PUBLISHed state and a
// registration come back after a restart.
func TestPublicationsAndRegistrationsAreRestored(t *testing.T) {
	store := newMemStore()
	now := time.Now()
	saved := &Saved{
		Publications: []Publication{{ETag: "e1", UserID: "debbie", Expires: now.Add(time.Hour),
			Person: bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityMeeting}, Note: "Budget review"}},
			{ETag: "old", UserID: "debbie", Expires: now.Add(-time.Second)}},
		Bindings: []Binding{{UserID: "bob", Contact: "sip:bob@127.0.0.1:5099", CallID: "r1", CSeq: 3, Expires: now.Add(time.Hour)}},
	}
	env := newEnv(t, trusted, func(o *Options) { o.Store = store; o.Restore = saved })
	st, _ := env.bridge.State("debbie")
	if !st.Person.Has(bridge.ActivityMeeting) || st.Person.Note != "Budget review" {
		t.Errorf("published state not restored: %+v", st.Person)
	}
	if pubs := env.srv.Publications(); len(pubs) != 1 || pubs[0].ETag != "e1" {
		t.Errorf("publications %+v, want only the unexpired e1", pubs)
	}
	if regs := env.srv.Registrations(); len(regs) != 1 || regs[0].UserID != "bob" {
		t.Errorf("registrations %+v", regs)
	}
}

// TestFailedSaveIsRetried: a batch the store refuses stays pending and
// goes out with the next one.
func TestFailedSaveIsRetried(t *testing.T) {
	store := newMemStore()
	store.fail = 2
	env := newEnv(t, trusted, func(o *Options) { o.Store, o.FlushInterval = store, 20*time.Millisecond })
	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE got %d", res.StatusCode)
	}
	waitUntil(t, 2*time.Second, "saved after two failures", func() bool { return store.count() == 1 })
	if n := env.srv.UnsavedChanges(); n != 0 {
		t.Errorf("%d changes still unsaved", n)
	}
}

// TestUnrestorableRecordsAreForgotten: saved subscriptions to users gone
// from the directory, or that cannot be read, are not restored and are
// deleted from the store.
func TestUnrestorableRecordsAreForgotten(t *testing.T) {
	store := newMemStore()
	good := SavedSubscription{ID: "ok", CallID: "c1", RemoteTag: "r", UserID: "debbie", Entity: "sip:100@x",
		LocalURI: "sip:100@x", RemoteURI: "sip:w@x", Target: "sip:w@127.0.0.1:5099", Transport: "UDP",
		Source: "127.0.0.1:5099", Expires: time.Now().Add(time.Hour), CSeq: 70, Version: 64}
	gone, bad := good, good
	gone.ID, gone.UserID = "gone", "nobody"
	bad.ID, bad.Target = "bad", "not a uri"
	for _, r := range []SavedSubscription{good, gone, bad} {
		store.subs[r.ID] = r
	}
	env := newEnv(t, trusted, func(o *Options) {
		o.Store, o.FlushInterval, o.Restore = store, 20*time.Millisecond, store.copy()
	})
	if total, _ := env.srv.Subscriptions(); total != 1 {
		t.Errorf("%d subscriptions restored, want 1", total)
	}
	waitUntil(t, 2*time.Second, "unrestorable records deleted", func() bool {
		store.mu.Lock()
		defer store.mu.Unlock()
		_, g := store.subs["gone"]
		_, b := store.subs["bad"]
		return !g && !b
	})
}
