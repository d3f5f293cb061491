package presence

import (
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// TestFanOutUnderFlappingCallDoesNotDeadlock is the shape that wedged the
// bridge: one user with 1,000 watchers whose call flips between ringing
// and answered every few milliseconds, so that the bridge's listener
// (under the bridge's lock) and the NOTIFY workers (under a
// subscription's lock) meet constantly. Every Apply must return, and once
// the flapping stops every watcher must get the final state.
func TestFanOutUnderFlappingCallDoesNotDeadlock(t *testing.T) {
	watchers := 1000
	if testing.Short() {
		watchers = 200
	}
	env := newEnv(t, trusted, func(o *Options) { o.Coalesce = 2 * time.Millisecond })
	peer := newRawPeer(t, env.udp)
	subs := peer.subscribeMany("100", "dialog", watchers)
	waitUntil(t, 10*time.Second, "every watcher subscribed", func() bool { return env.srv.Watchers("debbie") == watchers })

	applied := make(chan struct{}, 1)
	stop := time.Now().Add(2 * time.Second)
	go func() {
		defer close(applied)
		for i := 0; time.Now().Before(stop); i++ {
			if i%2 == 0 {
				env.bridge.Apply(ringing("101"))
			} else {
				env.bridge.Apply(answered("101"))
			}
			select {
			case applied <- struct{}{}:
			default:
			}
			time.Sleep(5 * time.Millisecond)
		}
		env.bridge.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "c1", Device: "PJSIP/100", State: bridge.CallTerminated}})
	}()
	// The flapping goroutine must keep making progress: a wedged bridge
	// stops it for good.
	for progressed := true; progressed; {
		select {
		case _, open := <-applied:
			progressed = open
		case <-time.After(5 * time.Second):
			t.Fatal("the bridge is wedged: no Apply returned within 5s")
		}
	}
	done := make(chan struct{})
	go func() { env.srv.Watchers("debbie"); env.bridge.State("debbie"); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the bridge's state cannot be read after the flapping")
	}
	// Every watcher ends on the idle document (no dialog element).
	waitUntil(t, 20*time.Second, "every watcher sees the call end", func() bool {
		for _, d := range subs {
			if !strings.Contains(peer.lastBody(d.callID), "<dialog-info") || strings.Contains(peer.lastBody(d.callID), "<dialog ") {
				return false
			}
		}
		return true
	})
}
