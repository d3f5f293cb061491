package presence

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/internal/notifytx"
)

// HandleChange takes a user's state change from the bridge and schedules
// NOTIFYs to every watcher of that user. It never blocks: it is called
// with the bridge's lock held. A change to ringing goes out at once, and
// so does the first change after a quiet spell (or, when a new leg's
// dialog identifiers are on their way, as soon as they come, within
// Options.PickupWait); further changes of the same user within
// Options.Coalesce of the last NOTIFY become one, sent when the window
// ends.
func (s *Server) HandleChange(c bridge.Change) {
	now := time.Now()
	if c.State != nil && s.holdForIDs(c, now) {
		return
	}
	if c.Previous != nil && c.State != nil && c.Previous.IDsPending && !c.State.IDsPending && c.Previous.Equal(c.State) {
		return // only the wait for ids ended: nothing to show
	}
	if c.State == nil {
		s.paceMu.Lock()
		delete(s.pace, c.UserID)
		s.paceMu.Unlock()
		for _, sub := range s.subs.watchers(c.UserID, nil) {
			if sub.List != "" {
				// The list goes on without them; relist reads the
				// directory, which the bridge lock held here guards.
				go s.relist(sub)
				continue
			}
			s.terminate(sub, "noresource")
		}
		return
	}
	if s.opt.Coalesce <= 0 {
		s.kickUser(c.UserID, now, c.Urgent)
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
		s.kickUser(c.UserID, changedAt, c.Urgent)
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
		if p.held {
			// The user's NOTIFY waits for a leg's ids (holdForIDs): the
			// release carries this change, and the state it would
			// show now is the one being held back.
			p.pending = false
			s.paceMu.Unlock()
			return
		}
		p.pending, p.last = false, time.Now()
		first := p.first
		s.paceMu.Unlock()
		s.kickUser(c.UserID, first, false)
	})
}

// userPace is when a user's watchers were last kicked, and whether a
// coalesced kick is waiting.
type userPace struct {
	last    time.Time
	first   time.Time // the first change the waiting kick carries
	pending bool
	// held: the user started ringing and the NOTIFY waits for the
	// ringing leg's dialog ids (holdForIDs), since heldAt.
	held   bool
	heldAt time.Time
}

// holdForIDs holds the NOTIFY of a user while a new leg's dialog
// identifiers are still on their way from the PBX (bridge.State.IDsPending:
// a ringing leg's tags, a new channel's Call-ID), and releases it, as
// urgent, with the change that brings them or when Options.PickupWait
// runs out. It reports whether it took the change.
func (s *Server) holdForIDs(c bridge.Change, now time.Time) bool {
	if s.opt.PickupWait <= 0 || (!c.State.IDsPending && s.held.Load() == 0) {
		return false // nothing to hold, nobody held: no lock on the change path
	}
	s.paceMu.Lock()
	p := s.pace[c.UserID]
	switch {
	case p != nil && p.held && c.State.IDsPending:
		s.paceMu.Unlock()
		return true // still waiting: the release carries this change
	case p != nil && p.held:
		p.held, p.pending, p.last = false, false, now
		s.held.Add(-1)
		at := p.heldAt
		s.paceMu.Unlock()
		s.kickUser(c.UserID, at, true)
		return true
	case !c.State.IDsPending:
		s.paceMu.Unlock()
		return false
	}
	if p == nil {
		p = &userPace{}
		s.pace[c.UserID] = p
	}
	p.held, p.heldAt = true, now
	s.held.Add(1)
	s.paceMu.Unlock()
	time.AfterFunc(s.opt.PickupWait, func() {
		s.paceMu.Lock()
		if !p.held || !p.heldAt.Equal(now) {
			s.paceMu.Unlock()
			return
		}
		p.held, p.pending, p.last = false, false, time.Now()
		s.held.Add(-1)
		s.paceMu.Unlock()
		s.opt.Metrics.PickupWaitExpired()
		s.kickUser(c.UserID, now, true)
	})
	return true
}

// holding reports whether a user's NOTIFYs are held for a leg's ids.
func (s *Server) holding(userID string) bool {
	if s.held.Load() == 0 {
		return false
	}
	s.paceMu.Lock()
	defer s.paceMu.Unlock()
	p := s.pace[userID]
	return p != nil && p.held
}

// sinceEpoch is t as a subscription keeps it: time since the server's
// epoch, on the monotonic clock; 0 for the zero time. The epoch lies a
// second before the server was made, so no real time is 0.
func (s *Server) sinceEpoch(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	if d := t.Sub(s.epoch); d != 0 {
		return d
	}
	return 1
}

// kickUser queues a NOTIFY for every watcher of a user; urgent (the
// user started ringing) is not held back by a list's batching.
func (s *Server) kickUser(userID string, changedAt time.Time, urgent bool) {
	for _, sub := range s.subs.watchers(userID, nil) {
		if urgent && sub.List != "" {
			sub.mu.Lock()
			if sub.list != nil {
				sub.list.urgent = true
			}
			sub.mu.Unlock()
		}
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
	if at := s.sinceEpoch(changedAt); at != 0 && (sub.changedAt == 0 || at < sub.changedAt) {
		sub.changedAt = at
	}
	push := !sub.queued && !sub.inflight && !sub.unanswered
	if push {
		sub.queued = true
	}
	sub.mu.Unlock()
	if push {
		s.queue.push(sub)
	}
}

// terminate ends a subscription with a final NOTIFY giving reason.
// reasonUnsubscribed ends a subscription its subscriber ended itself
// (Expires: 0): the final NOTIFY says terminated with no reason.
const reasonUnsubscribed = "unsubscribed"

func (s *Server) terminate(sub *Subscription, reason string) {
	sub.mu.Lock()
	if sub.removed {
		sub.mu.Unlock()
		return
	}
	sub.removed, sub.final = true, reason
	sub.mu.Unlock()
	s.unlist(sub, reason)
	s.log.Debug("subscription terminated", "user", sub.UserID, "list", sub.List, "event", sub.Package, "reason", reason, "source", sub.Source)
	s.enqueue(sub, time.Time{}, true)
}

// markDropped ends a subscription without a final NOTIFY (the
// subscriber is gone or refused our NOTIFY); called with sub.mu held.
// The caller then unlists it, with the lock released (the store's lock
// and the journal's come before a subscription's: doc.go).
func markDropped(sub *Subscription) {
	sub.removed, sub.done = true, true
}

// unlist takes an ended subscription (marked removed under its lock) out
// of the store and the journal and tells its user's watcher-info
// watchers; called with no subscription lock held.
func (s *Server) unlist(sub *Subscription, reason string) {
	s.subs.remove(sub)
	s.journal.unsubscribed(sub)
	s.ended(sub, reason)
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

// sendNotify builds the NOTIFY for sub's current state and sends it.
func (s *Server) sendNotify(sub *Subscription) {
	if s.fenced(sub) {
		return
	}
	if sub.List != "" {
		s.sendListNotify(sub)
		return
	}
	if !s.notifyDue(sub) {
		return
	}
	sub.mu.Unlock()
	// The bridge is read with no subscription lock held (doc.go).
	st, ok := s.states.State(sub.UserID)
	heldBack := ok && st.IDsPending && s.holding(sub.UserID)
	if !s.stillDue(sub) {
		return
	}
	final := sub.final
	if !ok && final == "" {
		final = "noresource"
		sub.removed = true
		defer s.unlist(sub, final) // after the lock is released
	}
	if final == "" && !sub.force && !sub.shows(st) {
		sub.dirty = false // nothing new since the last NOTIFY
		sub.mu.Unlock()
		return
	}
	if final == "" && heldBack {
		// Queued before the user's NOTIFY began to wait for a leg's
		// ids (holdForIDs): this state is the one held back; the
		// release queues it again (it stays dirty). A NOTIFY that must
		// be sent (a subscription's first, a refresh's, one after a
		// restart) waits too, at most PickupWait: sent now it would
		// show a ringing call without the ids a pickup needs.
		sub.mu.Unlock()
		return
	}
	sub.lastState = st
	d := s.draftNotify(sub, final, sub.pkg.Versioned())
	s.sendDraft(sub, d, func(dst []byte, h hop, compact bool) []byte {
		return s.appendNotify(dst, sub, h, st, d.version, final, d.remaining, d.tx.Branch, compact)
	}, nil)
}

// Every NOTIFY, a user's or a list's, is made the same way:
//
//	notifyDue → (snapshot under the lock) → read the bridge, unlocked →
//	stillDue → draftNotify → render → sendDraft
//
// notifyDue takes sub off the queue and reports whether a NOTIFY is due
// (its state changed, it has not ended, none is in flight); then it
// returns with sub.mu held, for the caller to take what it needs before
// it releases the lock and reads the bridge (under no lock of ours:
// doc.go).
func (s *Server) notifyDue(sub *Subscription) bool {
	sub.mu.Lock()
	sub.queued = false
	if sub.done || !sub.dirty || sub.inflight {
		sub.mu.Unlock()
		return false
	}
	return true
}

// stillDue takes sub's lock again after the bridge was read and reports
// whether the NOTIFY is still due; then it returns with the lock held.
// Another worker may have taken it meanwhile (a change queued it again),
// or it ended: that pass renders the newer state.
func (s *Server) stillDue(sub *Subscription) bool {
	sub.mu.Lock()
	if sub.done || !sub.dirty || sub.inflight || sub.queued {
		sub.mu.Unlock()
		return false
	}
	return true
}

// renderer renders a NOTIFY for a hop; fit asks for the form that fits a
// datagram (a person's compact document, or a list's members spread over
// several NOTIFYs).
type renderer func(dst []byte, h hop, fit bool) []byte

// notifyDraft is a NOTIFY begun in its dialog: what its rendering needs.
type notifyDraft struct {
	tx            *notifyTx
	network, addr string
	version       uint32
	remaining     int
	changedAt     time.Time
}

// draftNotify begins a NOTIFY in sub's dialog: the next CSeq and version
// (beginNotify), a transaction, and where it goes. Called with sub.mu
// held.
func (s *Server) draftNotify(sub *Subscription, final string, versioned bool) notifyDraft {
	var d notifyDraft
	d.version, d.remaining, d.changedAt = s.beginNotify(sub, final, versioned)
	d.tx = s.notifier.NewTx(sub)
	d.network, d.addr = s.address(sub)
	return d
}

// sendDraft renders a drafted NOTIFY for the subscription's hop and,
// once the lock is released, sends it. rendered (nil: none) is called
// under the lock after rendering, told whether a fitting fallback was
// kept, and returns what to call if the fallback is sent (nil: nothing).
// Called with sub.mu held; returns with it released.
func (s *Server) sendDraft(sub *Subscription, d notifyDraft, render renderer, rendered func(fallback bool) func()) {
	network, h, fallback, size := s.renderNotify(sub, d.tx, d.network, render)
	var onFallback func()
	if rendered != nil {
		onFallback = rendered(fallback != nil)
	}
	cseq := sub.cseq
	if nb, ok := sub.pkg.(notifyBuilder); ok {
		nb.Built(sub)
	}
	sub.mu.Unlock()
	s.transmit(sub, d.tx, network, d.addr, h, fallback, size, d.changedAt, cseq, onFallback)
}

// beginNotify starts a NOTIFY's transaction in the dialog: the next CSeq
// and (versioned) document version, the final one marked, an early save
// when the stored reservation is used up. It returns the version the
// document carries, the seconds left, and the first change it carries.
// Called with sub.mu held.
func (s *Server) beginNotify(sub *Subscription, final string, versioned bool) (version uint32, remaining int, changedAt time.Time) {
	sub.dirty, sub.force, sub.inflight = false, false, true
	sub.cseq++
	version = sub.version
	if versioned {
		sub.version++
	}
	if final != "" {
		sub.done = true
	} else if sub.savedCSeq != 0 && (sub.cseq >= sub.savedCSeq || sub.version >= sub.savedVersion) {
		s.journal.subscription(sub, true) // the stored reservation is used up
	}
	remaining = int(time.Until(sub.expires).Round(time.Second) / time.Second)
	if sub.changedAt != 0 {
		changedAt = s.epoch.Add(sub.changedAt)
	}
	sub.changedAt = 0
	return version, remaining, changedAt
}

// renderNotify renders a NOTIFY into tx's buffer for the subscription's
// own hop. One too large for a UDP datagram goes over TCP where we listen
// on it, with render's fitting form (fit: a person's compact document,
// or a list's members spread over several NOTIFYs) kept as the fallback;
// else the fitting form at once. Called with sub.mu held.
func (s *Server) renderNotify(sub *Subscription, tx *notifyTx, network string, render renderer) (string, hop, []byte, int) {
	h := sub.hop()
	*tx.Buf = render(*tx.Buf, h, false)
	var fitting []byte // the UDP fallback when TCP is tried first
	size := len(*tx.Buf)
	if network == "udp" && size > s.opt.MaxUDPNotify {
		// It would not leave (EMSGSIZE) and the watcher would be blamed.
		// RFC 3261 §18.1.1: a large request goes over TCP where the peer
		// takes it (phones listen on TCP at their UDP port); else send
		// what fits.
		fitting = render(nil, h, true)
		if th, ok := s.tcpHop(sub); ok {
			*tx.Buf = render((*tx.Buf)[:0], th, false)
			h, network = th, "tcp"
		} else {
			*tx.Buf, fitting = append((*tx.Buf)[:0], fitting...), nil
			if !sub.warnedSize { // once per subscription: a list sends many
				sub.warnedSize = true
				s.log.Warn("NOTIFY too large for a UDP datagram, and no TCP listener to send it over: sent what fits "+
					"(a person's compact document, a list in several NOTIFYs); listen on TCP too",
					"user", sub.UserID, "list", sub.List, "source", sub.Source, "bytes", size, "sent_bytes", len(*tx.Buf))
			}
		}
	}
	return network, h, fitting, size
}

// transmit sends a rendered NOTIFY (falling back to the fitting form
// over UDP when TCP cannot be reached, and then calling onFallback) and
// starts its transaction.
func (s *Server) transmit(sub *Subscription, tx *notifyTx, network, addr string, h hop, fitting []byte, size int,
	changedAt time.Time, cseq uint32, onFallback func()) {
	err := s.connect(s.ctx, tx, network, addr, h)
	if err != nil && fitting != nil {
		sub.mu.Lock()
		warn := !sub.warnedSize
		sub.warnedSize = true
		sub.mu.Unlock()
		if warn {
			s.log.Warn("NOTIFY too large for a UDP datagram and the subscriber takes no TCP: sent what fits "+
				"(a person's compact document, a list in several NOTIFYs)",
				"user", sub.UserID, "list", sub.List, "source", sub.Source, "bytes", size, "sent_bytes", len(fitting), "tcp_err", err)
		}
		*tx.Buf = append((*tx.Buf)[:0], fitting...)
		if onFallback != nil {
			onFallback()
		}
		err = s.connect(s.ctx, tx, "udp", addr, sub.hop())
	}
	if err == nil {
		err = s.notifier.Start(tx)
	} else {
		s.notifier.Release(tx)
	}
	if err != nil {
		s.notifyDone(sub, notifytx.Outcome{}, "transport", err)
		return
	}
	if !changedAt.IsZero() {
		s.opt.Metrics.NotifyLatency(time.Since(changedAt))
	}
	if s.log.Enabled(s.ctx, slog.LevelDebug) {
		s.log.Debug("NOTIFY sent", "user", sub.UserID, "list", sub.List, "cseq", cseq, "dest", addr)
	}
}

// notifyTxDone is the outcome of a NOTIFY transaction.
func (s *Server) notifyTxDone(tx *notifyTx, res notifytx.Outcome, failure string, err error) {
	s.notifyDone(tx.Owner, res, failure, err)
}

// notifyDone handles the outcome of a NOTIFY: success; 481 or another
// refusal ends the subscription; a timeout or server error is retried
// with backoff, and only repeated failures end it.
func (s *Server) notifyDone(sub *Subscription, res notifytx.Outcome, failure string, err error) {
	sub.mu.Lock()
	sub.inflight = false
	retry, wasRemoved := false, sub.removed
	switch {
	case res.Code >= 200 && res.Code < 300:
		sub.failures = 0
		s.opt.Metrics.NotifySent(sub.Package, sub.Transport)
	case res.Code == 481 && sub.done && sub.final == reasonUnsubscribed:
		// The subscriber forgot the dialog as it unsubscribed (Linphone
		// does): the final NOTIFY had nothing left to tell it.
	case res.Code == 481:
		s.opt.Metrics.NotifyFailed("481")
		if !sub.done {
			s.log.Debug("subscriber forgot the subscription (481)", "user", sub.UserID, "source", sub.Source)
			markDropped(sub)
		}
	case res.Code != 0 && res.Code != 408 && res.Code < 500:
		s.opt.Metrics.NotifyFailed("rejected")
		if !sub.done {
			s.log.Info("subscriber refused a NOTIFY: ending the subscription", "user", sub.UserID,
				"source", sub.Source, "status", res.Code)
			markDropped(sub)
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
		if int(sub.failures) >= s.opt.NotifyRetries {
			s.log.Warn("subscriber does not answer NOTIFYs: ending the subscription", "user", sub.UserID,
				"source", sub.Source, "failures", sub.failures, "err", errString(err, res))
			markDropped(sub)
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
	dropped := !wasRemoved && sub.removed // here
	sub.mu.Unlock()
	if dropped {
		s.unlist(sub, "timeout")
	}
	if again {
		s.queue.push(sub)
	}
	if retry {
		time.AfterFunc(backoff, func() { s.enqueue(sub, time.Time{}, true) })
	}
}

func errString(err error, res notifytx.Outcome) string {
	switch {
	case err != nil:
		return err.Error()
	case res.Code != 0:
		return strconv.Itoa(res.Code) + " " + res.Reason
	}
	return ""
}

// hop is how a NOTIFY leaves: its transport and our address on it (Via
// and Contact).
type hop struct {
	Transport string // UDP, TCP or TLS
	Host      string
	Port      int
}

// hop is the subscription's own: the transport it came on.
func (sub *Subscription) hop() hop { return hop{sub.Transport, sub.LocalHost, sub.LocalPort} }

// tcpHop is our TCP address for reaching sub, when we listen on TCP.
func (s *Server) tcpHop(sub *Subscription) (hop, bool) {
	for _, l := range s.opt.Listen {
		if strings.EqualFold(l.Transport, "tcp") {
			host, port := s.localAddr("TCP", sub.Source)
			return hop{"TCP", host, port}, true
		}
	}
	return hop{}, false
}

// MaxDatagram is the largest NOTIFY sent over UDP at most: an IPv6 UDP
// payload (65,527) less room for the IP options some paths add.
const MaxDatagram = 65000

// appendNotify renders the in-dialog NOTIFY into dst: Request-URI the
// remote target, From/To our and their tags, our CSeq, the route set,
// and the body for the subscriber's package. Called with sub.mu held.
func (s *Server) appendNotify(dst []byte, sub *Subscription, h hop, st *bridge.State, version uint32, final string, remaining int, branch string, compact bool) []byte {
	dst = s.appendNotifyHead(dst, sub, h, final, remaining, branch)
	if st == nil {
		return append(dst, "Content-Length: 0\r\n\r\n"...)
	}
	opt := body.Options{Version: version, SingleDialog: sub.Single || compact, Plain: sub.Single || compact, Compact: compact,
		DNDText: sub.DNDText}
	dst = append(dst, "Content-Type: "...)
	dst = append(dst, sub.MediaType...)
	scratch := s.notifier.Scratch()
	b := sub.pkg.Render((*scratch)[:0], sub, st, opt)
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(b)), 10)
	dst = append(dst, "\r\n\r\n"...)
	dst = append(dst, b...)
	*scratch = b[:0]
	s.notifier.PutScratch(scratch)
	return dst
}

// appendNotifyHead renders the NOTIFY's start line and the headers every
// NOTIFY of the dialog has, up to the body's. Called with sub.mu held.
func (s *Server) appendNotifyHead(dst []byte, sub *Subscription, h hop, final string, remaining int, branch string) []byte {
	dst = append(dst, "NOTIFY "...)
	dst = append(dst, sub.target...)
	dst = append(dst, " SIP/2.0\r\nVia: SIP/2.0/"...)
	dst = append(dst, h.Transport...)
	dst = append(dst, ' ')
	dst = appendHost(dst, h.Host)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, int64(h.Port), 10)
	dst = append(dst, ";branch="...)
	dst = append(dst, branch...)
	dst = append(dst, ";rport\r\n"...)
	for _, r := range sub.routes {
		dst = append(dst, "Route: <"...)
		dst = append(dst, r...)
		dst = append(dst, ">\r\n"...)
	}
	dst = append(dst, "Max-Forwards: 70\r\nFrom: <"...)
	dst = append(dst, sub.LocalURI...)
	dst = append(dst, ">;tag="...)
	dst = append(dst, sub.ID...)
	dst = append(dst, "\r\nTo: <"...)
	dst = append(dst, sub.RemoteURI...)
	dst = append(dst, ">;tag="...)
	dst = append(dst, sub.RemoteTag...)
	dst = append(dst, "\r\nCall-ID: "...)
	dst = append(dst, sub.CallID...)
	dst = append(dst, "\r\nCSeq: "...)
	dst = strconv.AppendUint(dst, uint64(sub.cseq), 10)
	dst = append(dst, " NOTIFY\r\nContact: <"...)
	dst = appendContactURI(dst, h.Transport, s.contactHost(h.Host), h.Port)
	dst = append(dst, ">\r\nEvent: "...)
	dst = append(dst, sub.Package.String()...)
	if sub.EventID != "" {
		dst = append(dst, ";id="...)
		dst = append(dst, sub.EventID...)
	}
	switch final {
	case "":
		dst = append(dst, "\r\nSubscription-State: active;expires="...)
		dst = strconv.AppendInt(dst, int64(max(remaining, 1)), 10)
	case reasonUnsubscribed:
		// Ended by the subscriber itself, which knows why: no reason
		// (timeout would say it lapsed, and invite it back at once).
		dst = append(dst, "\r\nSubscription-State: terminated"...)
	default:
		dst = append(dst, "\r\nSubscription-State: terminated;reason="...)
		dst = append(dst, final...)
	}
	dst = append(dst, "\r\nUser-Agent: "...)
	dst = append(dst, s.opt.UserAgent...)
	return append(dst, "\r\n"...)
}

// contactHost is the host our Contact names: Options.ContactHost, else
// the address the subscriber reaches this node at.
func (s *Server) contactHost(local string) string {
	if s.opt.ContactHost != "" {
		return s.opt.ContactHost
	}
	return local
}

// appendContactURI appends our URI for a transport: sips: for TLS,
// ;transport=tcp for TCP.
func appendContactURI(dst []byte, transport, host string, port int) []byte {
	if transport == "TLS" {
		dst = append(dst, "sips:"...)
	} else {
		dst = append(dst, "sip:"...)
	}
	dst = appendHost(dst, host)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, int64(port), 10)
	if transport == "TCP" {
		dst = append(dst, ";transport=tcp"...)
	}
	return dst
}

// appendHost appends a host for a URI or Via: an IPv6 address in
// brackets.
func appendHost(dst []byte, host string) []byte {
	if strings.IndexByte(host, ':') >= 0 && !strings.HasPrefix(host, "[") {
		dst = append(dst, '[')
		dst = append(dst, host...)
		return append(dst, ']')
	}
	return append(dst, host...)
}

// sendQueue is an unbounded FIFO of subscriptions waiting for a NOTIFY
// worker. Pushing never blocks.
type sendQueue struct {
	mu     sync.Mutex // guards items and closed; a leaf
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

// len is the number of subscriptions waiting.
func (q *sendQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
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
