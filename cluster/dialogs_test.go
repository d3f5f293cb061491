package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"hash/maphash"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cluster/natstest"
	"github.com/lamplighter/lamplighter/presence"
)

// fakeHost records what a node hands its SIP server.
type fakeHost struct {
	mu       sync.Mutex
	adopted  []presence.SavedSubscription
	bindings map[string][]presence.Binding
}

func (h *fakeHost) Adopt(recs []presence.SavedSubscription, _ bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.adopted = append(h.adopted, recs...)
	return len(recs)
}
func (h *fakeHost) Forget(ids []string) int   { return len(ids) }
func (h *fakeHost) SubscriptionIDs() []string { return nil }
func (h *fakeHost) Resave([]string)           {}
func (h *fakeHost) Unfence() int              { return 0 }
func (h *fakeHost) adoptedIDs() (ids []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.adopted {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}
func (h *fakeHost) SetBindings(user string, bs []presence.Binding) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bindings == nil {
		h.bindings = map[string][]presence.Binding{}
	}
	h.bindings[user] = bs
}

// hostedMember is a node with a fake SIP server attached.
func hostedMember(t *testing.T, name string, urls []string) (*Node, *fakeHost) {
	t.Helper()
	dir, _ := bridge.NewDirectory([]bridge.User{{ID: "debbie", Extensions: []string{"100"}}})
	n := New(Config{Node: name, URLs: urls, LeaseTTL: 3 * time.Second}, bridge.New(dir), nil)
	h := &fakeHost{}
	n.Attach(h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = n.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, 20*time.Second, name+" synced and leased", func() bool { return !n.Status().Degraded() })
	return n, h
}

// TestDeadNodesDialogsAreReadByPrefix: dialog keys carry the node that
// wrote them first; the node taking over a dead node's dialogs finds
// them under the prefixes the index names (its own, and those of dialogs
// it had claimed from others), also under keys an older version wrote
// without a prefix, and claims each at its own key.
func TestDeadNodesDialogsAreReadByPrefix(t *testing.T) {
	nats := natstest.Start(t, 1)
	a, host := hostedMember(t, "a", nats.URLs())
	ctx := context.Background()
	put := func(key, owner, id string) {
		t.Helper()
		b, _ := json.Marshal(dialogValue{Owner: owner, Dialog: presence.SavedSubscription{ID: id, UserID: "debbie"}})
		if _, err := a.dialogs.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
	}
	put("x.d1", "x", "d1") // x accepted it
	put("y.d2", "x", "d2") // x claimed it from y
	put("x.d3", "y", "d3") // y claimed it from x
	put("d4", "x", "d4")   // written without a prefix
	put("z.d5", "z", "d5") // another node's
	waitFor(t, 5*time.Second, "a's index has every dialog", func() bool {
		a.dmu.Lock()
		defer a.dmu.Unlock()
		return len(a.dindex) == 5
	})
	ids := func(recs []presence.SavedSubscription) []string {
		var out []string
		for _, r := range recs {
			out = append(out, r.ID)
		}
		slices.Sort(out)
		return out
	}
	recs, at, err := a.collectDialogsOf(ctx, "x")
	if err != nil || !slices.Equal(ids(recs), []string{"d1", "d2", "d4"}) || at["d2"].key != "y.d2" || at["d4"].key != "d4" {
		t.Fatalf("x's dialogs: %v %v %v", ids(recs), at, err)
	}
	if err := a.dialogs.Delete(ctx, "d4"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a sees d4 gone", func() bool {
		a.dmu.Lock()
		defer a.dmu.Unlock()
		return a.dindex["d4"].owner.Value() == ""
	})
	if recs, _, err := a.collectDialogsOf(ctx, "x"); err != nil || !slices.Equal(ids(recs), []string{"d1", "d2"}) {
		t.Fatalf("x's dialogs by prefix: %v %v", ids(recs), err)
	}

	a.claimFrom(ctx, "x")
	if got := host.adoptedIDs(); !slices.Equal(got, []string{"d1", "d2"}) {
		t.Fatalf("adopted %v, want d1 d2", got)
	}
	for _, key := range []string{"x.d1", "y.d2"} {
		e, err := a.dialogs.Get(ctx, key)
		if err != nil || ownerOf(e.Value()) != "a" {
			t.Errorf("%s after the claim: %v %v", key, err, e)
		}
	}
	if keys, _ := a.dialogs.Keys(ctx); len(keys) != 4 {
		t.Errorf("keys after the claim: %v (the claim must not add keys)", keys)
	}
}

// TestBindingsReachEveryNode: a user's bindings saved on one node reach
// the other's SIP server, are not written back by it, and removing them
// reaches it too.
func TestBindingsReachEveryNode(t *testing.T) {
	nats := natstest.Start(t, 1)
	a, _ := hostedMember(t, "a", nats.URLs())
	b, hb := hostedMember(t, "b", nats.URLs())
	bs := []presence.Binding{{UserID: "debbie", Contact: "sip:line@192.0.2.1", CallID: "c1", CSeq: 1,
		Expires: time.Now().Add(time.Hour)}}
	store := a.Store(nopStore{})
	if err := store.Save(presence.Batch{Bindings: map[string][]presence.Binding{"debbie": bs}}); err != nil {
		t.Fatal(err)
	}
	got := func() []presence.Binding {
		hb.mu.Lock()
		defer hb.mu.Unlock()
		return hb.bindings["debbie"]
	}
	waitFor(t, 5*time.Second, "b has debbie's binding", func() bool { g := got(); return len(g) == 1 && g[0].Contact == bs[0].Contact })
	// b's server saves what it applied: b must not write it back.
	writes := b.stats.Writes.Load()
	if err := b.Store(nopStore{}).Save(presence.Batch{Bindings: map[string][]presence.Binding{"debbie": got()}}); err != nil {
		t.Fatal(err)
	}
	if b.Status().Pending != 0 || b.stats.Writes.Load() != writes {
		t.Errorf("b wrote back what it applied (pending %d)", b.Status().Pending)
	}
	if err := store.Save(presence.Batch{Bindings: map[string][]presence.Binding{"debbie": nil}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b has no binding left", func() bool {
		hb.mu.Lock()
		defer hb.mu.Unlock()
		bs, ok := hb.bindings["debbie"]
		return ok && len(bs) == 0
	})
}

// nopStore is a state file that keeps nothing.
type nopStore struct{}

func (nopStore) Save(presence.Batch) error { return nil }

// TestRecordSumReadsEveryField: a change to any field of a dialog record
// changes its sum (else a write of it would be skipped as "the engine has
// it already"); a field added to the record must be added to the sum.
func TestRecordSumReadsEveryField(t *testing.T) {
	base := presence.SavedSubscription{}
	seed := maphash.MakeSeed()
	zero := recordSum(seed, &base)
	typ := reflect.TypeOf(base)
	for i := range typ.NumField() {
		r := base
		f := reflect.ValueOf(&r).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("x")
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Uint32:
			f.SetUint(1)
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"<sip:proxy>"}))
		case reflect.Struct: // time.Time
			f.Set(reflect.ValueOf(time.Unix(1, 0)))
		default:
			t.Fatalf("field %s: kind %v not covered by this test", typ.Field(i).Name, f.Kind())
		}
		if recordSum(seed, &r) == zero {
			t.Errorf("field %s does not change the sum", typ.Field(i).Name)
		}
	}
}

// TestDialogValueIsEncodingJSONs: a dialog key's value is what
// encoding/json writes for it (nodes of an earlier release read it), and
// reads back whole, the direct way and from what encoding/json wrote.
func TestDialogValueIsEncodingJSONs(t *testing.T) {
	rec := presence.SavedSubscription{ID: "0001abc", CallID: "c@p", List: "team", Routes: []string{"sip:p;lr"},
		Expires: time.Date(2026, 11, 26, 10, 0, 0, 7, time.UTC), CSeq: 70, Version: 71}
	want, _ := json.Marshal(dialogValue{Owner: "pbx-a", Dialog: rec})
	got := encodeDialog("pbx-a", &rec)
	if !bytes.Equal(got, want) {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	for _, b := range [][]byte{got, []byte(`{"dialog":` + string(got[len(`{"owner":"pbx-a","dialog":`):len(got)-1]) + `,"owner":"pbx-a"}`)} {
		v, err := decodeDialog(b)
		if err != nil || v.Owner != "pbx-a" || v.Dialog.ID != rec.ID || v.Dialog.List != "team" || !v.Dialog.Expires.Equal(rec.Expires) || v.Dialog.CSeq != 70 {
			t.Errorf("%s read back as %+v, %v", b, v, err)
		}
	}
}
