package presence

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// holdStore holds the subscription store, where the workers stop on a
// new SUBSCRIBE, until the returned func (safe to call twice) lets go.
func holdStore(env *testEnv) (release func()) {
	env.srv.subs.mu.Lock()
	var once sync.Once
	return func() { once.Do(env.srv.subs.mu.Unlock) }
}

// retryAfterOf checks a shed answer: 503 with a Retry-After within the
// configured spread.
func retryAfterOf(t *testing.T, env *testEnv, p *rawPeer, callID string) {
	t.Helper()
	res := p.response(callID, 5*time.Second)
	ra, err := strconv.Atoi(header(res, "Retry-After"))
	if res.StatusCode != 503 || err != nil || ra < 1 || ra > env.srv.opt.RetryAfter {
		t.Fatalf("shed request: %d with Retry-After %q, want 503 with 1..%d", res.StatusCode, header(res, "Retry-After"), env.srv.opt.RetryAfter)
	}
}

// TestFullRequestQueueSheds: with every worker busy and the request queue
// full, a new SUBSCRIBE is answered 503 with Retry-After at once and
// keeps nothing; the queued ones are served when the workers are free.
func TestFullRequestQueueSheds(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxPendingRequests = 1 })
	p := newRawPeer(t, env.udp)
	// The workers stop at the store, which the test holds.
	release := holdStore(env)
	defer release()
	var subs []*rawSub
	for i := range env.srv.workers + 1 {
		// One at a time, each taken by a worker before the next: the
		// queue holds one.
		d := &rawSub{callID: fmt.Sprintf("held-%d", i), fromTag: "ft", user: "100", event: "dialog"}
		subs = append(subs, d)
		p.send(p.subscribeMsg(d, 600))
		taken, queued := i+1, 0
		if i == env.srv.workers {
			taken, queued = i, 1 // every worker is busy: this one waits
		}
		waitUntil(t, 5*time.Second, fmt.Sprintf("request %d taken", i), func() bool {
			return env.srv.udpTxs.Size() == taken && len(env.srv.work) == queued
		})
	}
	shed := &rawSub{callID: "shed", fromTag: "ft", user: "100", event: "dialog"}
	p.send(p.subscribeMsg(shed, 600))
	retryAfterOf(t, env, p, "shed")
	if n := env.srv.udpTxs.Size(); n != env.srv.workers {
		t.Errorf("%d transactions kept; the shed request must keep none", n)
	}
	if env.srv.Shed() != 1 {
		t.Errorf("Shed() = %d, want 1", env.srv.Shed())
	}
	release()
	answered := map[string]int{}
	deadline := time.After(5 * time.Second)
	for len(answered) < len(subs) {
		select {
		case r := <-p.responses:
			if r.StatusCode >= 200 {
				answered[r.CallID().Value()] = r.StatusCode
			}
		case <-deadline:
			t.Fatalf("answered once the workers were free: %v, want all %d", answered, len(subs))
		}
	}
	for id, code := range answered {
		if code != 200 {
			t.Errorf("%s: %d once the workers were free", id, code)
		}
	}
	// Its retry is a new request, taken now.
	p.send(p.subscribeMsg(shed, 600))
	if res := p.response("shed", 5*time.Second); res.StatusCode != 200 {
		t.Errorf("the retry: %d", res.StatusCode)
	}
}

// TestNotifyBacklogShedsNewSubscriptions: while more NOTIFYs wait for
// answers than MaxPendingNotifies (phones too busy to answer), a new
// SUBSCRIBE gets 503 with Retry-After; other requests are still served,
// and once the backlog clears, SUBSCRIBEs are taken again.
func TestNotifyBacklogShedsNewSubscriptions(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxPendingNotifies = 2 })
	silent := newRawPeer(t, env.udp)
	silent.answerNotify.Store(0) // never answers its NOTIFYs
	subs := silent.subscribeMany("100", "dialog", 3)
	waitUntil(t, 5*time.Second, "three NOTIFYs in flight", func() bool { return env.srv.notifyBacklog() == 3 })
	p := newRawPeer(t, env.udp)
	d := &rawSub{callID: "late", fromTag: "ft", user: "101", event: "dialog"}
	p.send(p.subscribeMsg(d, 600))
	retryAfterOf(t, env, p, "late")
	msg, callID := p.request("OPTIONS", "100", nil, "")
	p.send(msg)
	if res := p.response(callID, 5*time.Second); res.StatusCode != 200 {
		t.Errorf("OPTIONS while overloaded: %d", res.StatusCode)
	}
	// The silent phone unsubscribes; its NOTIFYs time out (Timer F).
	for _, s := range subs {
		silent.send(silent.subscribeMsg(s, 0))
	}
	waitUntil(t, 10*time.Second, "the backlog cleared", func() bool { return env.srv.notifyBacklog() <= 2 })
	p.send(p.subscribeMsg(d, 600))
	if res := p.response("late", 5*time.Second); res.StatusCode != 200 {
		t.Errorf("after the backlog: %d", res.StatusCode)
	}
}

// TestQueuedBytesAreBounded: large requests fill the request queue's byte
// budget long before its count: past maxQueuedBytes they are shed, so a
// flood of 30 KiB datagrams holds at most that much while the workers are
// busy.
func TestQueuedBytesAreBounded(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxPendingRequests = 100000 })
	p := newRawPeer(t, env.udp)
	release := holdStore(env)
	defer release()
	for i := range env.srv.workers { // every worker stops at the store
		d := &rawSub{callID: fmt.Sprintf("block-%d", i), fromTag: "ft", user: "100", event: "dialog"}
		p.send(p.subscribeMsg(d, 600))
	}
	waitUntil(t, 5*time.Second, "every worker busy", func() bool { return env.srv.udpTxs.Size() == env.srv.workers })
	pad := "X-Pad: " + strings.Repeat("p", 30<<10)
	n := 2 * maxQueuedBytes / (30 << 10)
	for range n {
		msg, _ := p.request("OPTIONS", "100", []string{pad}, "")
		p.send(msg)
		if q := env.srv.queuedBytes.Load(); q > maxQueuedBytes {
			t.Fatalf("%d bytes queued, bound %d", q, maxQueuedBytes)
		}
	}
	waitUntil(t, 5*time.Second, "large requests shed", func() bool { return env.srv.Shed() > 0 })
	if q := env.srv.queuedBytes.Load(); q > maxQueuedBytes || q < maxQueuedBytes/2 {
		t.Errorf("%d bytes queued after %d requests of 30 KiB; the bound is %d", q, n, maxQueuedBytes)
	}
	release()
	waitUntil(t, 10*time.Second, "the queue drained", func() bool { return env.srv.queuedBytes.Load() == 0 })
}
