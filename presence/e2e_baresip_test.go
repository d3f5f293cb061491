package presence

import (
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// These tests drive a real softphone from Debian, baresip, as the
// watcher (package baresiptest): its presence module SUBSCRIBEs with
// Event: presence and reports what it understood on its UDP console.

// startBaresip runs baresip with account, watching Debbie at uri.
func startBaresip(t *testing.T, account, uri string) *baresiptest.Phone {
	t.Helper()
	return baresiptest.Start(t, baresiptest.Options{Account: account,
		Contacts: []baresiptest.Contact{{Name: "Debbie", URI: uri}}})
}

func TestBaresipWatchesEveryCallStep(t *testing.T) {
	baresiptest.Need(t)
	// Loopback is not trusted: baresip must authenticate, with the default
	// challenge (MD5: baresip 1.0 aborts on a SHA-256 challenge).
	env := newEnv(t, func(o *Options) { o.DigestAlgorithms = nil })
	sp := startBaresip(t, "<sip:bob@127.0.0.1>;auth_user=bob;auth_pass=b-secret;regint=0", "sip:100@"+env.udp)

	sp.WaitPresence("Debbie", "Online", 10*time.Second)
	waitUntil(t, 5*time.Second, "baresip's subscription", func() bool { return env.srv.Watchers("debbie") == 1 })

	env.bridge.Apply(ringing("101"))
	sp.WaitPresence("Debbie", "Busy", 5*time.Second)
	env.bridge.Apply(answered("101"))
	held := answered("101").(bridge.CallUpdated)
	held.Call.Held = true
	env.bridge.Apply(held)
	sp.WaitPresence("Debbie", "Busy", 5*time.Second)
	env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "c1"})
	sp.WaitPresence("Debbie", "Online", 5*time.Second)

	// Person state: dnd is rendered as rpid:busy, which baresip shows as
	// Busy; baresip 1.0 maps rpid:away to its closed status, "Offline".
	env.bridge.SetPerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityDND}})
	sp.WaitPresence("Debbie", "Busy", 5*time.Second)
	env.bridge.ClearPerson("debbie", "api")
	sp.WaitPresence("Debbie", "Online", 5*time.Second)
	env.bridge.SetPerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityAway}, Note: "Lunch"})
	sp.WaitPresence("Debbie", "Offline", 5*time.Second)
	env.bridge.ClearPerson("debbie", "api")
	sp.WaitPresence("Debbie", "Online", 5*time.Second)

	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceUnavailable})
	sp.WaitPresence("Debbie", "Offline", 5*time.Second)
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceIdle})
	sp.WaitPresence("Debbie", "Online", 5*time.Second)

	// Quitting unsubscribes (Expires: 0): the server lets go.
	sp.Command("/quit")
	select {
	case <-sp.Exited:
	case <-time.After(10 * time.Second):
		t.Fatal("baresip did not quit")
	}
	waitUntil(t, 5*time.Second, "unsubscribe", func() bool { return env.srv.Watchers("debbie") == 0 })
}

func TestBaresipWithWrongPasswordLearnsNothing(t *testing.T) {
	baresiptest.Need(t)
	m := newTestMetrics()
	env := newEnv(t, func(o *Options) { o.Metrics = m; o.DigestAlgorithms = nil })
	sp := startBaresip(t, "<sip:bob@127.0.0.1>;auth_user=bob;auth_pass=wrong;regint=0", "sip:100@"+env.udp)
	env.bridge.Apply(ringing("101"))
	// baresip tries, is refused, and never sees a state.
	waitUntil(t, 10*time.Second, "a refused SUBSCRIBE", func() bool {
		return strings.Contains(sp.Output(), "401 Unauthorized")
	})
	for range 5 {
		if p := sp.PresenceOf("Debbie"); p == "Busy" || p == "Online" {
			t.Fatalf("baresip learned %q with a wrong password", p)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if env.srv.Watchers("debbie") != 0 || m.sent.Load() != 0 {
		t.Errorf("a subscription or NOTIFY for a wrong password")
	}
}
