package presence

import (
	"bytes"
	"context"
	"fmt"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// TestStormDoesNotWedge runs at once, for a few seconds, everything that
// takes the server's locks from a different side: a call flapping under
// hundreds of watchers (fan-out under the bridge's lock), a soft client
// publishing, refreshing and removing its state (the publications' lock
// and the bridge), dialogs adopted and forgotten as in a failover (the
// store, the journal, watcher info), the directory reloaded with a
// user and a list coming and going (terminations, relisting), bindings
// and credentials replaced, and readers of all of it. Each part counts
// its rounds; a part that makes no progress for four seconds is a wedge,
// and the test fails with every goroutine's stack.
func TestStormDoesNotWedge(t *testing.T) {
	users := []bridge.User{
		{ID: "debbie", Name: "Debbie Harry", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}},
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/101"}}},
	}
	withList := func(bob bool) *bridge.Directory {
		us := users
		if !bob {
			us = users[:1]
		}
		members := []string{"debbie"}
		if bob {
			members = append(members, "bob")
		}
		dir, err := bridge.NewDirectory(us, bridge.List{Name: "desk", Members: members})
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
	store := newMemStore()
	env := newEnvDir(t, withList(true), trusted, func(o *Options) {
		o.Coalesce, o.Store, o.FlushInterval = 2*time.Millisecond, store, 10*time.Millisecond
	})
	peer := newRawPeer(t, env.udp)
	watchers := 300
	if testing.Short() {
		watchers = 60
	}
	peer.subscribeMany("100", "dialog", watchers)
	peer.subscribeMany("100", "presence", watchers/3)
	peer.subscribeMany("101", "dialog", watchers/3)
	peer.subscribeMany("100", "presence.winfo", 5)
	for i := range 20 { // the receptionist's lists (their 200s are not waited for)
		d := &rawSub{callID: fmt.Sprintf("desk-%d", i), fromTag: fmt.Sprintf("f%d", i), user: "desk", event: "dialog"}
		peer.send(peer.subscribeMsg(d, 600, "Supported: eventlist",
			"Accept: multipart/related, application/rlmi+xml, application/dialog-info+xml"))
	}
	publisher, resubscriber := newRawPeer(t, env.udp), newRawPeer(t, env.udp)

	type part struct {
		name   string
		rounds atomic.Int64
		run    func(i int)
	}
	target := fmt.Sprintf("sip:watcher@127.0.0.1:%d", peer.port())
	etag := "" // the publisher's
	parts := []*part{
		{name: "fan-out", run: func(i int) {
			if i%2 == 0 {
				env.bridge.Apply(ringing("101"))
			} else {
				env.bridge.Apply(answered("101"))
			}
		}},
		{name: "publish", run: func(i int) {
			// A soft client's life: publish, refresh (SIP-If-Match: the
			// refresh path reads the bridge), and now and then remove.
			headers := []string{"Event: presence", "Content-Type: application/pidf+xml"}
			body := meetingPIDF
			switch {
			case etag == "":
				headers = append(headers, "Expires: 60")
			case i%5 == 4:
				headers, body = append(headers, "Expires: 0", "SIP-If-Match: "+etag), ""
			default:
				headers = append(headers, "Expires: 60", "SIP-If-Match: "+etag)
			}
			msg, callID := publisher.request("PUBLISH", "100", headers, body)
			publisher.send(msg)
			etag = ""
			if res := publisher.awaitResponse(callID, 2*time.Second); res != nil && res.StatusCode == 200 && body != "" {
				if h := res.GetHeader("SIP-ETag"); h != nil {
					etag = h.Value()
				}
			}
			_ = env.srv.Publications()
		}},
		{name: "restore", run: func(i int) {
			// What a start restores from the state file: publications go
			// to the bridge as they are installed.
			env.srv.restore(&Saved{Publications: []Publication{{ETag: fmt.Sprintf("restored%d", i%4), UserID: "debbie",
				Expires: time.Now().Add(time.Minute), Person: bridge.PersonState{Note: fmt.Sprint("restored ", i)}}}})
		}},
		{name: "failover", run: func(i int) {
			id := fmt.Sprintf("storm%d", i)
			rec := SavedSubscription{ID: id, CallID: id + "@test", RemoteTag: "rt", UserID: "debbie",
				Entity: "sip:100@127.0.0.1", Package: PackageDialog, LocalURI: "sip:100@127.0.0.1",
				RemoteURI: "sip:watcher@127.0.0.1", Target: target, Transport: "UDP",
				Source: fmt.Sprintf("127.0.0.1:%d", peer.port()), Expires: time.Now().Add(time.Hour), CSeq: 10, Version: 10}
			env.srv.Adopt([]SavedSubscription{rec}, true)
			env.srv.Forget([]string{id})
			env.srv.Resave(env.srv.SubscriptionIDs()[:1])
		}},
		{name: "reload", run: func(i int) {
			env.bridge.SetDirectory(withList(i%2 == 1))
			env.srv.DirectoryChanged()
			env.srv.SetCredentials([]Credential{{Username: "debbie", UserID: "debbie", Password: fmt.Sprint("pw", i%3)}})
			if i%2 == 1 { // bob is back: a watcher of his (not waited for)
				d := &rawSub{callID: fmt.Sprintf("bob-%d", i), fromTag: "fb", user: "101", event: "dialog"}
				resubscriber.send(resubscriber.subscribeMsg(d, 600))
			}
		}},
		{name: "bindings", run: func(i int) {
			env.srv.SetBindings("debbie", []Binding{{UserID: "debbie", Contact: fmt.Sprintf("sip:d@192.0.2.1:%d", 5060+i%7),
				CallID: "reg", CSeq: uint32(i + 1), Expires: time.Now().Add(time.Minute)}})
		}},
		{name: "readers", run: func(i int) {
			env.srv.Watchers("debbie")
			env.srv.Subscriptions()
			env.srv.Registrations()
			env.bridge.State("debbie")
			env.srv.UnsavedChanges()
		}},
	}
	const (
		runFor = 6 * time.Second
		wedge  = 4 * time.Second // no progress for this long
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p.run(i)
				p.rounds.Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wedged := func(p *part) {
		t.Fatalf("%s made no progress for %v: a wedge\n%s", p.name, wedge, stacks())
	}
	last := make([]int64, len(parts))
	since := make([]time.Time, len(parts))
	for i := range since {
		since[i] = time.Now()
	}
	for end := time.Now().Add(runFor); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		for i, p := range parts {
			if n := p.rounds.Load(); n != last[i] {
				last[i], since[i] = n, time.Now()
			} else if time.Since(since[i]) > wedge {
				wedged(p)
			}
		}
	}
	close(stop)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatalf("the storm's parts did not all return within 10s: a wedge\n%s", stacks())
	}
	for _, p := range parts {
		if p.rounds.Load() < 5 {
			t.Errorf("%s ran only %d rounds in %v", p.name, p.rounds.Load(), runFor)
		}
		t.Logf("%s: %d rounds", p.name, p.rounds.Load())
	}
	// And the server still answers: a new watcher gets its 200.
	peer.subscribeMany("100", "dialog", 1)
}

// stacks is every goroutine's stack, for a wedge's report.
func stacks() string {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 1)
	return buf.String()
}

// flowAs is a Forwarder that forwards nothing and says every request's
// flow was registered as user (proxy mode's trust).
type flowAs struct{ runCheck }

func (flowAs) FlowUser(*sipmsg.Request) (string, string, bool) { return "101", "", true } // bob
func (flowAs) Run(ctx context.Context, _ ForwarderHost) error  { <-ctx.Done(); return nil }

// TestRemovingAUserWatchedThroughAFlowDoesNotWedge: a user removed by a
// reload ends their watchers' subscriptions from inside the bridge's
// change (its lock held). One watcher let in by a registered flow
// (watcher info names it by the user its flow stands for, which reads
// the directory), while anyone holds a watcher-info subscription: the
// directory was read under the bridge's own lock, and the reload never
// returned.
func TestRemovingAUserWatchedThroughAFlowDoesNotWedge(t *testing.T) {
	env := newEnv(t, func(o *Options) { o.Forwarder = flowAs{} })
	peer := newRawPeer(t, env.udp)
	peer.subscribeMany("101", "presence.winfo", 1) // bob's own watchers
	peer.subscribeMany("100", "dialog", 1)         // bob watches debbie
	dir, err := bridge.NewDirectory([]bridge.User{{ID: "bob", Name: "Bob", Extensions: []string{"101"},
		Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/101"}}}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { env.bridge.SetDirectory(dir); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the reload that removed debbie did not return within 5s: a wedge\n%s", stacks())
	}
	waitUntil(t, 5*time.Second, "debbie's watcher ended", func() bool { return env.srv.Watchers("debbie") == 0 })
}

// flowIn is a Forwarder whose every request's flow was registered as
// user@domain.
type flowIn struct {
	runCheck
	user, domain string
}

func (f flowIn) FlowUser(*sipmsg.Request) (string, string, bool) { return f.user, f.domain, true }
func (flowIn) Run(ctx context.Context, _ ForwarderHost) error    { <-ctx.Done(); return nil }

// TestAFlowStaysInItsTenant: a phone registered through the proxy as 100
// of tenant a.example is a.example's 100 wherever it subscribes: at the
// default domain (where 100 is another person) it is refused, not taken
// for the default domain's 100; at its own tenant it is let in.
func TestAFlowStaysInItsTenant(t *testing.T) {
	dir, err := bridge.NewTenantDirectory(bridge.Tenancy{Default: "test.invalid", Domains: []string{"a.example"}}, []bridge.User{
		{ID: "debbie", Name: "Debbie", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}},
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/101"}}},
		{ID: "ann", Name: "Ann", Tenant: "a.example", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/a100"}}},
		{ID: "abe", Name: "Abe", Tenant: "a.example", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/a101"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	env := newEnvDir(t, dir, func(o *Options) { o.Forwarder = flowIn{user: "100", domain: "a.example"} })
	peer := newRawPeer(t, env.udp)
	for _, c := range []struct {
		host string
		want int
	}{{"", 403}, {"a.example", 200}} {
		msg, callID := peer.request("SUBSCRIBE", "101", []string{"Event: dialog", "Expires: 600"}, "")
		if c.host != "" {
			msg = strings.Replace(msg, "sip:101@"+env.udp, "sip:101@"+c.host, 1)
			msg = strings.Replace(msg, "To: <sip:101@127.0.0.1>", "To: <sip:101@"+c.host+">", 1)
		}
		peer.send(msg)
		if res := peer.awaitResponse(callID, 5*time.Second); res == nil || res.StatusCode != c.want {
			t.Errorf("a.example's 100 at 101 of %q: %v, want %d", c.host, res, c.want)
		}
	}
}
