package presence

import (
	"testing"
	"time"
)

// TestExpiryWheel: a lapsed subscription ends at the sweep after its
// expiry, a refreshed one moves to its new second, and refreshes never
// add entries: the wheel holds one per subscription.
func TestExpiryWheel(t *testing.T) {
	env := newEnv(t, trusted)
	now := time.Now()
	lapsing := benchSubscription("lapsing", "127.0.0.1:9")
	refreshed := benchSubscription("refreshed", "127.0.0.1:9")
	for _, sub := range []*Subscription{lapsing, refreshed} {
		sub.expires = now.Add(2 * time.Second)
		env.srv.subs.add(sub, 10)
		env.srv.expiry.add(sub, sub.expires)
	}
	for range 100 { // a phone refreshing far more often than it must
		refreshed.mu.Lock()
		refreshed.expires = refreshed.expires.Add(time.Second)
		refreshed.mu.Unlock()
	}
	if n := env.srv.expiry.size(); n != 2 {
		t.Fatalf("%d entries after 100 refreshes, want 2", n)
	}
	env.srv.expireDue(now.Add(time.Second)) // neither due yet
	if _, ok := env.srv.subs.get("lapsing"); !ok {
		t.Fatal("ended before its expiry")
	}
	env.srv.expireDue(now.Add(3 * time.Second))
	if _, ok := env.srv.subs.get("lapsing"); ok {
		t.Error("a lapsed subscription is still held")
	}
	if _, ok := env.srv.subs.get("refreshed"); !ok {
		t.Error("a refreshed subscription ended at its old expiry")
	}
	if n := env.srv.expiry.size(); n != 1 {
		t.Errorf("%d entries, want the refreshed one alone", n)
	}
	env.srv.expireDue(now.Add(200 * time.Second))
	if _, ok := env.srv.subs.get("refreshed"); ok {
		t.Error("the refreshed subscription outlived its new expiry")
	}
	if n := env.srv.expiry.size(); n != 0 {
		t.Errorf("%d entries left", n)
	}
}
