package presence

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

const testPIDF = `<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:100@127.0.0.1">` +
	`<tuple id="t"><status><basic>open</basic></status><note>In a meeting</note></tuple></presence>`

// TestPublicationCap: a person holds at most MaxPublicationsPerUser
// publications; one more gets 403, and removing one makes room.
func TestPublicationCap(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxPublicationsPerUser = 3 })
	peer := newRawPeer(t, env.udp)
	publish := func(headers ...string) (int, string) {
		t.Helper()
		hs := append([]string{"Event: presence", "Content-Type: application/pidf+xml", "Expires: 600"}, headers...)
		body := testPIDF
		for _, h := range headers {
			if h == "Expires: 0" {
				hs[2], body = "Expires: 0", ""
				hs = hs[:len(hs)-1]
			}
		}
		msg, callID := peer.request("PUBLISH", "100", hs, body)
		peer.send(msg)
		res := peer.response(callID, 5*time.Second)
		return res.StatusCode, header(res, "SIP-ETag")
	}
	var tags []string
	for i := range 3 {
		code, tag := publish()
		if code != 200 {
			t.Fatalf("PUBLISH %d: %d", i, code)
		}
		tags = append(tags, tag)
	}
	if code, _ := publish(); code != 403 {
		t.Errorf("PUBLISH past the cap: %d, want 403", code)
	}
	// A refresh of one held is not a new one.
	if code, tag := publish("SIP-If-Match: " + tags[0]); code != 200 {
		t.Errorf("refresh at the cap: %d", code)
	} else {
		tags[0] = tag
	}
	if code, _ := publish("SIP-If-Match: "+tags[1], "Expires: 0"); code != 200 {
		t.Errorf("removal: %d", code)
	}
	if code, _ := publish(); code != 200 {
		t.Errorf("PUBLISH after one was removed: %d, want 200", code)
	}
	if n := len(env.srv.Publications()); n != 3 {
		t.Errorf("%d publications held, want 3", n)
	}
}

// TestRegistrationCap: a user holds at most MaxBindingsPerUser contacts;
// a REGISTER adding one more gets 403 and changes nothing, a refresh of a
// held one is fine.
func TestRegistrationCap(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxBindingsPerUser = 2 })
	peer := newRawPeer(t, env.udp)
	register := func(contacts ...string) int {
		t.Helper()
		hs := []string{"Expires: 600"}
		for _, c := range contacts {
			hs = append(hs, "Contact: <sip:debbie@127.0.0.1:"+c+">")
		}
		msg, callID := peer.request("REGISTER", "100", hs, "")
		peer.send(msg)
		return peer.response(callID, 5*time.Second).StatusCode
	}
	if code := register("5001"); code != 200 {
		t.Fatalf("first REGISTER: %d", code)
	}
	if code := register("5002"); code != 200 {
		t.Fatalf("second REGISTER: %d", code)
	}
	if code := register("5003"); code != 403 {
		t.Errorf("third contact: %d, want 403", code)
	}
	if code := register("5004", "5005"); code != 403 {
		t.Errorf("two more contacts at once: %d, want 403", code)
	}
	if code := register("5001"); code != 200 {
		t.Errorf("refresh of a held contact: %d", code)
	}
	if n := len(env.srv.Registrations()); n != 2 {
		t.Errorf("%d bindings, want 2", n)
	}
}

// TestRestoreWithinCaps: a state file holding 20,000 publications of one
// person (saved before the caps, or forged) and hundreds of bindings
// restores only what the caps allow, newest first, forgets the rest in
// the store, and does so quickly (it took 94 s, one SetPerson each).
func TestRestoreWithinCaps(t *testing.T) {
	store := newMemStore()
	now := time.Now()
	saved := &Saved{}
	for i := range 20000 {
		p := Publication{ETag: "e" + strconv.Itoa(i), UserID: "debbie", Expires: now.Add(time.Hour + time.Duration(i)*time.Millisecond),
			Person: bridge.PersonState{Note: fmt.Sprintf("note %d", i)}}
		saved.Publications = append(saved.Publications, p)
		store.pubs[p.ETag] = p
	}
	for i := range 500 {
		saved.Bindings = append(saved.Bindings, Binding{UserID: "bob", Contact: fmt.Sprintf("sip:bob@127.0.0.1:%d", 6000+i),
			CallID: "r", CSeq: 1, Expires: now.Add(time.Hour + time.Duration(i)*time.Millisecond)})
	}
	store.binds["bob"] = saved.Bindings
	start := time.Now()
	env := newEnv(t, trusted, func(o *Options) {
		o.Store, o.FlushInterval, o.Restore = store, 20*time.Millisecond, saved
	})
	t.Logf("restored in %v", time.Since(start))
	pubs := env.srv.Publications()
	if len(pubs) != DefaultMaxPublicationsPerUser {
		t.Fatalf("%d publications restored, want %d", len(pubs), DefaultMaxPublicationsPerUser)
	}
	for _, p := range pubs {
		if n, _ := strconv.Atoi(p.ETag[1:]); n < 20000-DefaultMaxPublicationsPerUser {
			t.Errorf("restored %s, not one of the newest", p.ETag)
		}
	}
	if n := len(env.srv.Registrations()); n != DefaultMaxBindingsPerUser {
		t.Errorf("%d bindings restored, want %d", n, DefaultMaxBindingsPerUser)
	}
	waitUntil(t, 5*time.Second, "the store forgets what is over the caps", func() bool {
		store.mu.Lock()
		defer store.mu.Unlock()
		return len(store.pubs) == DefaultMaxPublicationsPerUser && len(store.binds["bob"]) == DefaultMaxBindingsPerUser
	})
}
