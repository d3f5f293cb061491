package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/adapters/esl/esltest"
)

// eslDouble starts the FreeSWITCH event socket double Lamplighter connects to.
func eslDouble() (*esltest.Server, error) { return esltest.Listen("127.0.0.1:0", "ClueCon") }

func freePort() (int, error) {
	// A port free for both UDP and TCP.
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free for both UDP and TCP")
}

// buildSubs makes n subscriptions on new phones, perPhone each; a share
// of the phones use TCP and a share of the subscriptions the dialog
// package, both spread evenly.
func buildSubs(ctx context.Context, ps *phones, o options, n int, watch func(int) *user) ([]*sub, error) {
	var out []*sub
	var p *phone
	phoneNo := 0
	for i := range n {
		if i%o.perPhone == 0 {
			transport := "UDP"
			if spread(phoneNo, o.tcpShare) {
				transport = "TCP"
			}
			phoneNo++
			var err error
			if p, err = ps.add(ctx, transport); err != nil {
				return nil, err
			}
		}
		pkg := "presence"
		if spread(i, o.dialogShare) {
			pkg = "dialog"
		}
		out = append(out, p.newSub(watch(i), pkg))
	}
	return out, nil
}

// spread tells whether item i is among a share of items spread evenly.
func spread(i int, share float64) bool {
	return int(float64(i+1)*share) > int(float64(i)*share)
}

// setUp sends every SUBSCRIBE, with at most window in flight or (rate >
// 0, a storm) at that pace whatever is in flight, and waits for all final
// responses and then for each subscription's first NOTIFY.
func setUp(ctx context.Context, ps *phones, subs []*sub, window, expires int, rate float64) setupResult {
	r := setupResult{Subscriptions: len(subs), OfferedPerSecond: rate}
	before, shedBefore := ps.retransmitted.Load(), ps.shed.Load()
	dupBefore, notBefore := ps.duplicates.Load(), ps.notifies.Load()
	n := int64(len(subs))
	var ok, failed, answered, lastAt, next atomic.Int64
	done := make(chan struct{})
	sendErr := make(chan error, 1)
	send := func(s *sub) {
		if err := s.phone.subscribe(s, expires); err != nil {
			select {
			case sendErr <- err:
			default:
			}
		}
	}
	// The phone that reads a final response sends the next SUBSCRIBE
	// itself (at most window in flight): no hand-over to another
	// goroutine, whose wake-ups would be the load tool's cost, not the
	// server's.
	onAnswer := func(s *sub) {
		if st := s.status.Load(); st >= 200 && st < 300 {
			ok.Add(1)
		} else {
			failed.Add(1)
		}
		lastAt.Store(time.Now().UnixNano())
		if rate == 0 {
			if i := next.Add(1) - 1; i < n {
				send(subs[i])
			}
		}
		if answered.Add(1) == n {
			close(done)
		}
	}
	ps.onAnswer(onAnswer)
	defer ps.onAnswer(nil)
	start := time.Now()
	if n == 0 {
		close(done)
	}
	if rate > 0 { // a storm: open loop, the i-th goes out at i/rate whatever is in flight
		go func() {
			for i, s := range subs {
				if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
				send(s)
			}
		}()
	} else {
		first := min(int64(window), n)
		next.Store(first)
		for _, s := range subs[:first] {
			send(s)
		}
	}
	deadline := time.After(60*time.Second + time.Duration(len(subs))*time.Millisecond)
	select {
	case <-done:
	case err := <-sendErr:
		r.Error = err.Error()
	case <-deadline:
		r.Error = "final responses missing at the deadline"
	case <-ctx.Done():
		r.Error = ctx.Err().Error()
	}
	r.OK, r.Failed = int(ok.Load()), int(failed.Load())
	last := start
	if at := lastAt.Load(); at > 0 {
		last = time.Unix(0, at)
	}
	r.Missing = len(subs) - r.OK - r.Failed
	r.Seconds = last.Sub(start).Seconds()
	if r.Seconds > 0 {
		r.PerSecond = float64(r.OK) / r.Seconds
	}
	// Every accepted subscription gets its first NOTIFY.
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) && ctx.Err() == nil {
		waiting := 0
		for _, s := range subs {
			if st := s.status.Load(); st >= 200 && st < 300 && s.notifies.Load() == 0 {
				waiting++
			}
		}
		r.WithoutNotify = waiting
		if waiting == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.FirstNotifySeconds = time.Since(start).Seconds()
	r.Retransmissions = ps.retransmitted.Load() - before
	r.Shed = ps.shed.Load() - shedBefore
	r.Notifies, r.NotifyRetransmissions = ps.notifies.Load()-notBefore, ps.duplicates.Load()-dupBefore
	return r
}

// changes matches NOTIFYs to the outstanding change of their user and
// keeps the event→NOTIFY latencies.
type changes struct {
	mu        sync.Mutex
	latencies []time.Duration
	lastAt    time.Time // the latest matching NOTIFY
}

// notice is the phones' NOTIFY handler.
func (c *changes) notice(n notice) {
	u := n.sub.user
	u.mu.Lock()
	ch := u.out
	if ch == nil || n.phoneState != ch.want || n.at.Before(ch.sent) {
		u.mu.Unlock()
		return
	}
	lat := n.at.Sub(ch.sent)
	// Recorded before done is closed: whoever waits on done takes every
	// latency of the change (it once found the last one missing).
	c.mu.Lock()
	c.latencies = append(c.latencies, lat)
	if n.at.After(c.lastAt) {
		c.lastAt = n.at
	}
	c.mu.Unlock()
	ch.seen++
	if ch.seen >= u.watchers {
		u.out = nil
		close(ch.done)
	}
	u.mu.Unlock()
}

// take returns the latencies gathered and starts afresh.
func (c *changes) take() ([]time.Duration, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, at := c.latencies, c.lastAt
	c.latencies, c.lastAt = nil, time.Time{}
	return l, at
}

// abandon forgets u's outstanding change (never fully notified) and
// returns how many NOTIFYs it still lacked.
func abandon(u *user) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.out == nil {
		return 0
	}
	missing := u.watchers - u.out.seen
	u.out = nil
	return missing
}

// measureLatency sends events at rate for d, round robin over the users,
// skipping a user whose last change has not reached all its watchers.
func measureLatency(ctx context.Context, c *changes, p *pbx, users []*user, rate float64, d time.Duration) latencyResult {
	var r latencyResult
	c.take()
	start := time.Now()
	next := 0
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	sent := 0
	var sendErr error
	for now := start; now.Sub(start) < d && ctx.Err() == nil && sendErr == nil; now = <-tick.C {
		due := int(now.Sub(start).Seconds()*rate) + 1
		for sent < due {
			var u *user
			for range users {
				cand := users[next]
				next = (next + 1) % len(users)
				cand.mu.Lock()
				if cand.out == nil {
					u = cand
					break // u.mu stays held
				}
				cand.mu.Unlock()
			}
			if u == nil {
				r.Skipped += due - sent
				sent = due
				break
			}
			sendErr = p.advance(u)
			u.mu.Unlock()
			if errors.Is(sendErr, esltest.ErrNoClient) {
				// Lamplighter is between two connections (a resync):
				// the event is FreeSWITCH's to lose, not the run's.
				sendErr = nil
				r.Reconnecting++
				sent++
				continue
			}
			if sendErr != nil {
				break
			}
			sent++
			r.Events++
			r.Notifies += u.watchers
		}
	}
	elapsed := time.Since(start)
	r.EventsPerSecond = float64(r.Events) / elapsed.Seconds()
	// The changes still on their way get their 5 s even when ctx ended
	// the sending (the flood phase ends it at the flood's end).
	r.Missing = settle(context.WithoutCancel(ctx), users, 5*time.Second)
	lat, _ := c.take()
	r.Received = len(lat)
	r.fill(lat)
	if sendErr != nil {
		r.Error = sendErr.Error()
	}
	return r
}

// settle waits up to d for every outstanding change to reach all its
// watchers, then abandons the rest and returns the NOTIFYs they lacked.
func settle(ctx context.Context, users []*user, d time.Duration) int {
	end := time.Now().Add(d)
	missing := 0
	for _, u := range users {
		u.mu.Lock()
		ch := u.out
		u.mu.Unlock()
		if ch != nil {
			select {
			case <-ch.done:
			case <-time.After(time.Until(end)):
			case <-ctx.Done():
			}
		}
		missing += abandon(u)
	}
	return missing
}

// measureFanout changes one user rounds times, each when the last change
// has reached every watcher, and times each change to its last NOTIFY.
func measureFanout(ctx context.Context, c *changes, p *pbx, hot *user, rounds int) fanoutResult {
	r := fanoutResult{Watchers: hot.watchers}
	for range rounds {
		c.take()
		hot.mu.Lock()
		err := p.advance(hot)
		ch := hot.out
		hot.mu.Unlock()
		if err != nil {
			r.Error = err.Error()
			break
		}
		select {
		case <-ch.done:
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
		}
		r.Missing += abandon(hot)
		lat, last := c.take()
		if len(lat) == 0 {
			continue
		}
		r.Rounds = append(r.Rounds, ms(last.Sub(ch.sent)))
		r.Received += len(lat)
		// Past the coalescing window, so that the next change goes at once.
		time.Sleep(50 * time.Millisecond)
	}
	if len(r.Rounds) > 0 {
		sorted := slices.Sorted(slices.Values(r.Rounds))
		r.MedianMs, r.MaxMs = sorted[len(sorted)/2], sorted[len(sorted)-1]
		r.PerSecond = float64(r.Watchers) / (r.MedianMs / 1000)
	}
	return r
}

// measureBurst changes every user at once and times the first event to
// the last NOTIFY.
func measureBurst(ctx context.Context, c *changes, p *pbx, users []*user) burstResult {
	var r burstResult
	c.take()
	start := time.Now()
	for _, u := range users {
		u.mu.Lock()
		err := p.advance(u)
		u.mu.Unlock()
		if err != nil {
			r.Error = err.Error()
			break
		}
		r.Changes++
		r.Notifies += u.watchers
	}
	r.Missing = settle(ctx, users, 30*time.Second)
	lat, last := c.take()
	r.Received = len(lat)
	if !last.IsZero() {
		r.Seconds = last.Sub(start).Seconds()
		r.PerSecond = float64(r.Received) / r.Seconds
	}
	r.P99Ms = percentile(lat, 0.99)
	return r
}

// measureRestart stops Lamplighter with SIGTERM, starts it again and
// times, from the start, a NOTIFY with a higher CSeq on every subscription.
func measureRestart(ctx context.Context, t *target, ps *phones, subs []*sub) (restartResult, error) {
	r := restartResult{Subscriptions: len(subs)}
	before := make(map[*sub]uint32, len(subs))
	for _, s := range subs {
		if st := s.status.Load(); st >= 200 && st < 300 {
			before[s] = s.lastCSeq.Load()
		}
	}
	r.Subscriptions = len(before)
	var mu sync.Mutex
	var last time.Time
	var count atomic.Int64
	seen := make(map[*sub]bool, len(before))
	all := make(chan struct{})
	ps.onNotify(func(n notice) {
		mu.Lock()
		defer mu.Unlock()
		prev, ok := before[n.sub]
		if !ok || seen[n.sub] || n.cseq <= prev || n.terminated {
			return
		}
		seen[n.sub] = true
		last = n.at
		if count.Add(1) == int64(len(before)) {
			close(all)
		}
	})
	defer ps.onNotify(nil)
	stopped := time.Now()
	if err := t.stop(); err != nil {
		return r, err
	}
	r.StopSeconds = time.Since(stopped).Seconds()
	if err := t.start(ctx); err != nil {
		return r, err
	}
	timeout := 60*time.Second + time.Duration(len(before))*time.Millisecond
	select {
	case <-all:
	case <-time.After(timeout):
		r.Error = fmt.Sprintf("not every subscription re-notified within %v", timeout)
	case <-ctx.Done():
		return r, ctx.Err()
	}
	mu.Lock()
	r.Renotified = int(count.Load())
	if !last.IsZero() {
		r.Seconds = last.Sub(t.started).Seconds()
		r.SecondsPer10k = r.Seconds * 10000 / float64(max(r.Renotified, 1))
	}
	mu.Unlock()
	return r, nil
}

// measureRawUDP sends 1 kB datagrams from one socket to another on
// loopback for d: the ceiling for any NOTIFY fan-out on this machine.
func measureRawUDP(d time.Duration) rawUDPResult {
	var r rawUDPResult
	rc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer rc.Close()
	_ = rc.SetReadBuffer(4 << 20)
	var received atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := rc.Read(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	sc, err := net.DialUDP("udp", nil, rc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer sc.Close()
	payload := make([]byte, 1024)
	start := time.Now()
	var elapsed time.Duration
	for elapsed < d {
		for range 256 {
			if _, err := sc.Write(payload); err == nil {
				r.Datagrams++
			}
		}
		elapsed = time.Since(start)
	}
	r.PerSecond = float64(r.Datagrams) / elapsed.Seconds()
	r.Received = received.Load()
	return r
}

// profileDuring fetches a CPU profile of Lamplighter over about d into
// dir/phase.pprof, when dir is set. The returned func waits for it.
func (t *target) profileDuring(dir, phase string, d time.Duration, say func(string, ...any)) func() {
	if dir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		path := filepath.Join(dir, phase+".pprof")
		if err := t.profile(path, max(1, int(d.Round(time.Second)/time.Second))); err != nil {
			say("profile of %s: %v", phase, err)
			return
		}
		say("profile of %s in %s", phase, path)
	}()
	return func() { <-done }
}

// serverCounts reads Lamplighter's own counts of NOTIFYs.
func serverCounts(t *target) (serverResult, error) {
	m, err := t.metrics()
	if err != nil {
		return serverResult{}, err
	}
	return serverResult{
		NotifySent:        int64(sum(m, "lamplighter_notify_sent_total")),
		NotifyFailed:      int64(sum(m, "lamplighter_notify_failed_total")),
		NotifyTimeouts:    int64(sum(m, `lamplighter_notify_failed_total{reason="timeout"}`)),
		SubscriptionsHeld: int64(sum(m, "lamplighter_subscriptions{")),
	}, nil
}

func phoneCounts(ps *phones) phoneResult {
	return phoneResult{
		Notifies:                 ps.notifies.Load(),
		DuplicateNotifies:        ps.duplicates.Load(),
		SubscribeRetransmissions: ps.retransmitted.Load(),
		Terminated:               ps.terminated.Load(),
		Malformed:                ps.malformed.Load(),
	}
}

// measureRefreshing is measureLatency while the PBX's directory changes
// every period (a user added to the first tenant, then removed again) and
// Lamplighter is told to read it again (POST /api/v1/discovery/refresh,
// as a PBX's hook would after adding an extension): how long
// each change takes to show in the API, and what the reads cost the
// NOTIFYs.
func measureRefreshing(ctx context.Context, t *target, esl interface{ SetUsers([]byte) }, c *changes, p *pbx,
	users, listed []*user, rate float64, d, every time.Duration) refreshResult {
	extra := &user{id: "9998@t0.lampload", ext: "9998", domain: "t0.lampload", tenant: true}
	rctx, stop := context.WithCancel(ctx)
	var res refreshResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		var seen []time.Duration
		tick := time.NewTicker(every)
		defer tick.Stop()
		added := false
		for {
			select {
			case <-rctx.Done():
				res.VisibleP50Ms, res.VisibleMaxMs = percentile(seen, 0.5), percentile(seen, 1)
				return
			case <-tick.C:
			}
			added = !added
			if added {
				esl.SetUsers(directory(listed, extra))
			} else {
				esl.SetUsers(directory(listed, nil))
			}
			start := time.Now()
			if code, err := t.api("POST", "/discovery/refresh"); err != nil || code != 202 {
				res.Error = fmt.Sprintf("refresh: %d %v", code, err)
				continue
			}
			want := 404
			if added {
				want = 200
			}
			for rctx.Err() == nil {
				if code, err := t.api("GET", "/users/"+extra.id); err == nil && code == want {
					seen = append(seen, time.Since(start))
					res.Refreshes++
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
	}()
	res.Latency = measureLatency(ctx, c, p, users, rate, d)
	stop()
	<-done
	return res
}
