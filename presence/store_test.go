package presence

import (
	"maps"
	"testing"
)

// TestStoreCountsByKindAsTheyComeAndGo: the counts a metrics scrape reads
// follow every add and remove, as counting them all would give; a second
// subscription with a held id is refused and changes no count.
func TestStoreCountsByKindAsTheyComeAndGo(t *testing.T) {
	st := newStore()
	walk := func() map[SubscriptionKind]int {
		out := map[SubscriptionKind]int{}
		for _, s := range st.byID {
			out[s.kind()]++
		}
		return out
	}
	var subs []*Subscription
	for i, k := range []struct {
		pkg       Package
		transport string
		list      string
	}{
		{"dialog", "UDP", ""}, {"dialog", "UDP", ""}, {"presence", "TCP", ""}, {"dialog", "TLS", "desk"}, {"presence", "UDP", ""},
	} {
		s := &Subscription{ID: string(rune('a' + i)), UserID: "u", Package: k.pkg, Transport: k.transport,
			List: k.list, Source: "192.0.2.1:5060"}
		if !st.add(s, 0) {
			t.Fatalf("add %s refused", s.ID)
		}
		subs = append(subs, s)
		if got := st.countByKind(); !maps.Equal(got, walk()) {
			t.Fatalf("after adding %s: %v, counted %v", s.ID, got, walk())
		}
	}
	if !st.add(subs[0], 0) {
		t.Error("adding a held subscription again refused")
	}
	twin := &Subscription{ID: subs[1].ID, UserID: "u", Package: "dialog", Transport: "UDP", Source: "192.0.2.9:5060"}
	if st.add(twin, 0) {
		t.Error("another subscription with a held id taken")
	}
	if got := st.countByKind(); !maps.Equal(got, walk()) || got[SubscriptionKind{"dialog", "UDP", false}] != 2 {
		t.Fatalf("after the repeats: %v, counted %v", got, walk())
	}
	for _, s := range subs {
		if !st.remove(s) {
			t.Fatalf("remove %s", s.ID)
		}
		if got := st.countByKind(); !maps.Equal(got, walk()) {
			t.Fatalf("after removing %s: %v, counted %v", s.ID, got, walk())
		}
	}
	if total, by := st.count(); total != 0 || len(by) != 0 || len(st.byKind) != 0 {
		t.Fatalf("empty store counts %d %v %v", total, by, st.byKind)
	}
}
