package presence

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// HandleChange takes a user's state change from the bridge and schedules
// NOTIFYs to every watcher of that user. It never blocks: it is called
// with the bridge's lock held. A change to ringing goes out at once, and
// so does the first change after a quiet spell; further changes of the
// same user within Options.Coalesce of the last NOTIFY become one, sent
// when the window ends.
func (s *Server) HandleChange(c bridge.Change) {
	now := time.Now()
	if c.State == nil {
		s.paceMu.Lock()
		delete(s.pace, c.UserID)
		s.paceMu.Unlock()
		for _, sub := range s.subs.watchers(c.UserID, nil) {
			s.terminate(sub, "noresource")
		}
		return
	}
	if s.opt.Coalesce <= 0 {
		s.kickUser(c.UserID, now)
		return
	}
	s.paceMu.Lock()
	p := s.pace[c.UserID]
	if p == nil {
		p = &userPace{}
		s.pace[c.UserID] = p
	}
	switch {
	case p.pending && !c.Urgent:
		s.paceMu.Unlock() // the NOTIFY at the end of the window carries it
		return
	case c.Urgent || now.Sub(p.last) >= s.opt.Coalesce:
		changedAt := now
		if p.pending { // this kick carries the waiting change too
			changedAt = p.first
		}
		p.last, p.pending = now, false
		s.paceMu.Unlock()
		s.kickUser(c.UserID, changedAt)
		return
	}
	p.pending, p.first = true, now
	wait := p.last.Add(s.opt.Coalesce).Sub(now)
	s.paceMu.Unlock()
	time.AfterFunc(wait, func() {
		s.paceMu.Lock()
		if !p.pending { // an urgent change went first and carried it
			s.paceMu.Unlock()
			return
		}
		p.pending, p.last = false, time.Now()
		first := p.first
		s.paceMu.Unlock()
		s.kickUser(c.UserID, first)
	})
}

// userPace is when a user's watchers were last kicked, and whether a
// coalesced kick is waiting.
type userPace struct {
	last    time.Time
	first   time.Time // the first change the waiting kick carries
	pending bool
}

// kickUser queues a NOTIFY for every watcher of a user.
func (s *Server) kickUser(userID string, changedAt time.Time) {
	for _, sub := range s.subs.watchers(userID, nil) {
		s.enqueue(sub, changedAt, false)
	}
}

// enqueue marks sub as needing a NOTIFY and queues it unless it is queued
// or has one in flight already (then the NOTIFY after it carries the news).
// force sends even when the state has not changed (the first NOTIFY, a
// refresh, a retry).
func (s *Server) enqueue(sub *Subscription, changedAt time.Time, force bool) {
	sub.mu.Lock()
	if sub.done {
		sub.mu.Unlock()
		return
	}
	sub.dirty = true
	sub.force = sub.force || force
	if !changedAt.IsZero() && (sub.changedAt.IsZero() || changedAt.Before(sub.changedAt)) {
		sub.changedAt = changedAt
	}
	push := !sub.queued && !sub.inflight
	if push {
		sub.queued = true
	}
	sub.mu.Unlock()
	if push {
		s.queue.push(sub)
	}
}

// terminate ends a subscription with a final NOTIFY giving reason.
func (s *Server) terminate(sub *Subscription, reason string) {
	sub.mu.Lock()
	if sub.removed {
		sub.mu.Unlock()
		return
	}
	sub.removed, sub.final = true, reason
	if sub.timer != nil {
		sub.timer.Stop()
	}
	sub.mu.Unlock()
	s.subs.remove(sub)
	s.journal.unsubscribed(sub)
	s.log.Debug("subscription terminated", "user", sub.UserID, "event", sub.Package, "reason", reason, "source", sub.Source)
	s.enqueue(sub, time.Time{}, true)
}

// drop removes a subscription without a final NOTIFY (the subscriber is
// gone or refused our NOTIFY).
func (s *Server) drop(sub *Subscription) {
	sub.removed, sub.done = true, true
	if sub.timer != nil {
		sub.timer.Stop()
	}
	s.subs.remove(sub)
	s.journal.unsubscribed(sub)
}

// sendLoop is one NOTIFY worker.
func (s *Server) sendLoop(ctx context.Context) {
	for {
		sub, ok := s.queue.pop(ctx)
		if !ok {
			return
		}
		s.sendNotify(sub)
	}
}

// noBuild stops sipgo from adding headers of its own: NOTIFYs are built
// whole, as in-dialog requests.
func noBuild(*sipgo.Client, *sip.Request) error { return nil }

// sendNotify builds the NOTIFY for sub's current state and sends it.
func (s *Server) sendNotify(sub *Subscription) {
	sub.mu.Lock()
	sub.queued = false
	if sub.done || !sub.dirty {
		sub.mu.Unlock()
		return
	}
	st, ok := s.states.State(sub.UserID)
	final := sub.final
	if !ok && final == "" {
		final = "noresource"
		sub.removed = true
		defer s.subs.remove(sub)
		defer s.journal.unsubscribed(sub)
	}
	if final == "" && !sub.force && st == sub.lastState {
		sub.dirty = false // nothing new since the last NOTIFY
		sub.mu.Unlock()
		return
	}
	sub.dirty, sub.force, sub.inflight = false, false, true
	sub.cseq++
	version := sub.version
	if sub.Package == PackageDialog {
		sub.version++
	}
	if final != "" {
		sub.done = true
	} else if sub.savedCSeq != 0 && (sub.cseq >= sub.savedCSeq || sub.version >= sub.savedVersion) {
		s.journal.subscription(sub, true) // the stored reservation is used up
	}
	remaining := int(time.Until(sub.expires).Round(time.Second) / time.Second)
	changedAt := sub.changedAt
	sub.changedAt = time.Time{}
	sub.lastState = st
	req := s.buildNotify(sub, st, version, final, remaining)
	sub.mu.Unlock()

	tx, err := s.client.TransactionRequest(s.ctx, req, noBuild)
	if err != nil {
		s.notifyDone(sub, nil, "transport", err)
		return
	}
	if !changedAt.IsZero() {
		s.opt.Metrics.NotifyLatency(time.Since(changedAt))
	}
	s.log.Debug("NOTIFY sent", "user", sub.UserID, "cseq", req.CSeq().SeqNo, "dest", req.Destination())
	go s.await(sub, tx)
}

// await waits for a NOTIFY's final response.
func (s *Server) await(sub *Subscription, tx sip.ClientTransaction) {
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			s.notifyDone(sub, res, "", nil)
			return
		case <-tx.Done():
			s.notifyDone(sub, nil, "timeout", tx.Err())
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// notifyDone handles the outcome of a NOTIFY: success; 481 or another
// refusal ends the subscription; a timeout or server error is retried
// with backoff, and only repeated failures end it.
func (s *Server) notifyDone(sub *Subscription, res *sip.Response, failure string, err error) {
	sub.mu.Lock()
	sub.inflight = false
	retry := false
	switch {
	case res != nil && res.IsSuccess():
		sub.failures = 0
		s.opt.Metrics.NotifySent(sub.Package, sub.Transport)
	case res != nil && res.StatusCode == 481:
		s.opt.Metrics.NotifyFailed("481")
		if !sub.done {
			s.log.Debug("subscriber forgot the subscription (481)", "user", sub.UserID, "source", sub.Source)
			s.drop(sub)
		}
	case res != nil && res.StatusCode != 408 && res.StatusCode < 500:
		s.opt.Metrics.NotifyFailed("rejected")
		if !sub.done {
			s.log.Info("subscriber refused a NOTIFY: ending the subscription", "user", sub.UserID,
				"source", sub.Source, "status", res.StatusCode)
			s.drop(sub)
		}
	default:
		if failure == "" {
			failure = "timeout"
		}
		s.opt.Metrics.NotifyFailed(failure)
		sub.failures++
		if sub.done {
			break
		}
		if sub.failures >= s.opt.NotifyRetries {
			s.log.Warn("subscriber does not answer NOTIFYs: ending the subscription", "user", sub.UserID,
				"source", sub.Source, "failures", sub.failures, "err", errString(err, res))
			s.drop(sub)
			break
		}
		s.log.Debug("NOTIFY failed, will retry", "user", sub.UserID, "source", sub.Source,
			"failures", sub.failures, "err", errString(err, res))
		retry = true
	}
	again := !sub.done && sub.dirty && !sub.queued && !retry
	if again {
		sub.queued = true
	}
	backoff := time.Duration(1<<min(sub.failures, 6)) * time.Second
	sub.mu.Unlock()
	if again {
		s.queue.push(sub)
	}
	if retry {
		time.AfterFunc(backoff, func() { s.enqueue(sub, time.Time{}, true) })
	}
}

func errString(err error, res *sip.Response) string {
	switch {
	case err != nil:
		return err.Error()
	case res != nil:
		return strconv.Itoa(res.StatusCode) + " " + res.Reason
	}
	return ""
}

// buildNotify makes the in-dialog NOTIFY: Request-URI the remote target,
// From/To our and their tags, our CSeq, the route set, and the body for
// the subscriber's package. Called with sub.mu held.
func (s *Server) buildNotify(sub *Subscription, st *bridge.State, version uint32, final string, remaining int) *sip.Request {
	req := sip.NewRequest(sip.NOTIFY, *sub.target.Clone())
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: sub.Transport,
		Host: sub.LocalHost, Port: sub.LocalPort, Params: sip.NewParams()}
	via.Params.Add("branch", sip.GenerateBranchN(16))
	via.Params.Add("rport", "")
	req.AppendHeader(via)
	for i := range sub.routes {
		req.AppendHeader(&sip.RouteHeader{Address: *sub.routes[i].Clone()})
	}
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	from := &sip.FromHeader{Address: *sub.LocalURI.Clone(), Params: sip.NewParams()}
	from.Params.Add("tag", sub.ID)
	req.AppendHeader(from)
	to := &sip.ToHeader{Address: *sub.RemoteURI.Clone(), Params: sip.NewParams()}
	to.Params.Add("tag", sub.RemoteTag)
	req.AppendHeader(to)
	callID := sip.CallIDHeader(sub.CallID)
	req.AppendHeader(&callID)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: sub.cseq, MethodName: sip.NOTIFY})
	req.AppendHeader(contactHeader(sub.Transport, sub.LocalHost, sub.LocalPort))
	event := sub.Package.String()
	if sub.EventID != "" {
		event += ";id=" + sub.EventID
	}
	req.AppendHeader(sip.NewHeader("Event", event))
	if final != "" {
		req.AppendHeader(sip.NewHeader("Subscription-State", "terminated;reason="+final))
	} else {
		req.AppendHeader(sip.NewHeader("Subscription-State", "active;expires="+strconv.Itoa(max(remaining, 1))))
	}
	req.AppendHeader(sip.NewHeader("User-Agent", s.opt.UserAgent))
	if st != nil {
		opt := body.Options{Version: version, SingleDialog: sub.Single, Plain: sub.Single}
		var b []byte
		if sub.Package == PackageDialog {
			b = body.DialogInfo(make([]byte, 0, 1024), sub.Entity, st, opt)
			req.AppendHeader(sip.NewHeader("Content-Type", body.TypeDialogInfo))
		} else {
			b = body.PIDF(make([]byte, 0, 1024), sub.Entity, st, opt)
			req.AppendHeader(sip.NewHeader("Content-Type", body.TypePIDF))
		}
		req.SetBody(b)
	} else {
		req.SetBody(nil)
	}
	req.SetTransport(sub.Transport)
	s.route(req, sub)
	return req
}

// route picks where a NOTIFY goes: the first route of the route set, else
// back to the address the SUBSCRIBE came from (so NAT works), on the
// subscriber's own connection for TCP/TLS while it is open, and from the
// listening socket for UDP.
func (s *Server) route(req *sip.Request, sub *Subscription) {
	tl := s.ua.TransportLayer()
	network := strings.ToLower(sub.Transport)
	if len(sub.routes) > 0 {
		r := sub.routes[0]
		port := r.Port
		if port == 0 {
			port = int(sip.DefaultPort(sub.Transport))
		}
		req.SetDestination(net.JoinHostPort(r.Host, strconv.Itoa(port)))
	} else if network == "udp" {
		req.SetDestination(sub.Source)
	} else if c, err := tl.GetConnection(network, sub.Source); err == nil && c != nil {
		req.SetDestination(sub.Source)
	} else {
		port := sub.target.Port
		if port == 0 {
			port = int(sip.DefaultPort(sub.Transport))
		}
		req.SetDestination(net.JoinHostPort(sub.target.Host, strconv.Itoa(port)))
	}
	if network == "udp" {
		if c, err := tl.GetConnection("udp", req.Destination()); err != nil || c == nil {
			req.Laddr = s.udpListenerAddr(req.Destination())
		}
	}
}

// udpListenerAddr returns the UDP listener of the destination's address
// family, so that a NOTIFY to a peer we have not heard from on this
// socket (after a restart) still leaves from the listening port.
func (s *Server) udpListenerAddr(dest string) sip.Addr {
	destIs4 := !strings.Contains(hostOnly(dest), ":")
	for i, l := range s.opt.Listen {
		if strings.ToLower(l.Transport) != "udp" {
			continue
		}
		ua, ok := s.addrs[i].(*net.UDPAddr)
		if !ok {
			continue
		}
		if (ua.IP.To4() != nil || ua.IP.IsUnspecified() && len(ua.IP) == net.IPv4len) != destIs4 && !ua.IP.IsUnspecified() {
			continue
		}
		return sip.Addr{IP: ua.IP, Port: ua.Port}
	}
	return sip.Addr{}
}

// sendQueue is an unbounded FIFO of subscriptions waiting for a NOTIFY
// worker. Pushing never blocks.
type sendQueue struct {
	mu     sync.Mutex
	items  []*Subscription
	wake   chan struct{}
	closed bool
}

func newSendQueue() *sendQueue { return &sendQueue{wake: make(chan struct{}, 1)} }

func (q *sendQueue) push(s *Subscription) {
	q.mu.Lock()
	q.items = append(q.items, s)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *sendQueue) pop(ctx context.Context) (*Subscription, bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, false
		}
		if len(q.items) > 0 {
			s := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			more := len(q.items) > 0
			q.mu.Unlock()
			if more { // let another worker in
				select {
				case q.wake <- struct{}{}:
				default:
				}
			}
			return s, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-ctx.Done():
			return nil, false
		}
	}
}

func (q *sendQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}
