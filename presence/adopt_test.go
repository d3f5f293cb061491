package presence

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestContactHostNamesTheSharedAddress: with Options.ContactHost (a
// cluster's virtual IP) the Contact of the 200 and of NOTIFYs names it,
// while Via stays this node's own address.
func TestContactHostNamesTheSharedAddress(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.ContactHost = "blf.example.com" })
	p := newPhone(t, "UDP")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600})
	if res.StatusCode != 200 || !strings.Contains(header(res, "Contact"), "sip:blf.example.com:") {
		t.Fatalf("200: %d, Contact %q", res.StatusCode, header(res, "Contact"))
	}
	n := p.nextNotify(2 * time.Second)
	if !strings.Contains(header(n, "Contact"), "sip:blf.example.com:") || !strings.Contains(header(n, "Via"), "127.0.0.1:") {
		t.Errorf("NOTIFY: Contact %q, Via %q", header(n, "Contact"), header(n, "Via"))
	}
}

// TestAdoptDeletesWhatNobodyWillHold: adopted dialogs get a NOTIFY in
// their dialog; a lapsed one, or one of a user gone, is not adopted and
// is deleted from the store (after a failover nobody else would).
func TestAdoptDeletesWhatNobodyWillHold(t *testing.T) {
	store := newMemStore()
	env := newEnv(t, trusted, func(o *Options) { o.Store, o.FlushInterval = store, 20*time.Millisecond })
	p := newPhone(t, "UDP")
	live := SavedSubscription{ID: "adopt1", CallID: "c1@test", RemoteTag: "rt1", UserID: "debbie", Entity: "sip:100@127.0.0.1",
		Package: PackageDialog, LocalURI: "sip:100@127.0.0.1", RemoteURI: "sip:watcher@127.0.0.1",
		Target: "sip:watcher@" + p.addr.String(), Transport: "UDP", Source: p.addr.String(),
		Expires: time.Now().Add(time.Hour), CSeq: 100, Version: 100}
	lapsed, gone := live, live
	lapsed.ID, lapsed.Expires = "adopt2", time.Now().Add(-time.Second)
	gone.ID, gone.UserID = "adopt3", "nobody"
	if n := env.srv.Adopt([]SavedSubscription{live, lapsed, gone}, true); n != 1 {
		t.Fatalf("adopted %d, want 1", n)
	}
	n := p.nextNotify(2 * time.Second)
	if n.CallID().Value() != "c1@test" || n.CSeq().SeqNo != 101 {
		t.Errorf("NOTIFY Call-ID %s CSeq %d, want c1@test 101", n.CallID().Value(), n.CSeq().SeqNo)
	}
	waitUntil(t, 2*time.Second, "the refused dialogs deleted from the store", func() bool {
		store.mu.Lock()
		defer store.mu.Unlock()
		return slices.Contains(store.gone, "adopt2") && slices.Contains(store.gone, "adopt3") && store.subs["adopt1"].ID == "adopt1"
	})
	// Saved as the cluster holds it (Reserved), not as it was once its
	// NOTIFY had gone: the cluster's store then has nothing to write.
	store.mu.Lock()
	got := store.subs["adopt1"]
	store.mu.Unlock()
	want := Reserved(live)
	if !got.Expires.Equal(want.Expires) {
		t.Errorf("saved expiry %v, want %v", got.Expires, want.Expires)
	}
	got.Expires, want.Expires = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("saved\n%+v\nwant Reserved(record)\n%+v", got, want)
	}
}

// TestAdoptEndsARevokedDialog: a dialog handed over by a failover (or a
// claim) is checked against this node's config as a restored one is: one
// let in by a trusted network this node does not trust is ended at once,
// with a final NOTIFY in its dialog, and not taken.
func TestAdoptEndsARevokedDialog(t *testing.T) {
	env := newEnv(t) // no trusted network
	p := newPhone(t, "UDP")
	rec := SavedSubscription{ID: "adopt9", CallID: "c9@test", RemoteTag: "rt9", UserID: "debbie", Entity: "sip:100@127.0.0.1",
		Package: PackageDialog, LocalURI: "sip:100@127.0.0.1", RemoteURI: "sip:watcher@127.0.0.1",
		Target: "sip:watcher@" + p.addr.String(), Transport: "UDP", Source: p.addr.String(), Grant: grantTrusted,
		Expires: time.Now().Add(time.Hour), CSeq: 100, Version: 100}
	if n := env.srv.Adopt([]SavedSubscription{rec}, true); n != 0 {
		t.Errorf("adopted %d, want 0", n)
	}
	n := p.nextNotify(2 * time.Second)
	if n.CallID().Value() != "c9@test" || !strings.HasPrefix(header(n, "Subscription-State"), "terminated") {
		t.Errorf("NOTIFY Call-ID %s, Subscription-State %q; want the dialog's, terminated", n.CallID().Value(), header(n, "Subscription-State"))
	}
	if w := env.srv.Watchers("debbie"); w != 0 {
		t.Errorf("%d watchers of debbie held, want 0", w)
	}
}
