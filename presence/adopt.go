package presence

import (
	"slices"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// Dialogs that change hands at run time, for a cluster of nodes: one node
// adopts the dialogs of another that died (and NOTIFYs each in its dialog,
// as after a restart), forgets those another node took over, and sends
// no NOTIFY while it may not own what it holds (Options.MayNotify: its
// lease lapsed). The cluster package drives these.

// fenceState holds the subscriptions whose NOTIFY waits for the fence to
// lift.
type fenceState struct {
	mu   sync.Mutex // guards held; a leaf
	held []*Subscription
}

// fenced reports whether sub's NOTIFY must wait (Options.MayNotify says
// no); it then keeps sub for Unfence.
func (s *Server) fenced(sub *Subscription) bool {
	if s.opt.MayNotify == nil || s.opt.MayNotify() {
		return false
	}
	sub.mu.Lock()
	sub.queued = false
	sub.mu.Unlock()
	s.fence.mu.Lock()
	s.fence.held = append(s.fence.held, sub)
	s.fence.mu.Unlock()
	return true
}

// Unfence sends the NOTIFYs that waited while Options.MayNotify said no
// (those of dialogs forgotten meanwhile are dropped).
func (s *Server) Unfence() int {
	s.fence.mu.Lock()
	held := s.fence.held
	s.fence.held = nil
	s.fence.mu.Unlock()
	for _, sub := range held {
		s.enqueue(sub, time.Time{}, false)
	}
	return len(held)
}

// Reserved is the record a node that takes a dialog over stores for it
// before Adopt: the same dialog with its CSeq and version reservations
// moved on, so that the adopted dialog's first NOTIFYs need no second
// write to the store.
func Reserved(r SavedSubscription) SavedSubscription {
	r.CSeq += cseqReserve
	r.Version += cseqReserve
	return r
}

// Adopt takes subscription dialogs that another node held (it died) and
// sends each a NOTIFY in its dialog with the current state, from this
// node (its Contact is ours: NOTIFY refreshes the remote target). The
// records are as stored (CSeq and version are reservations past
// anything sent); reserved says the store already holds Reserved(r) for
// each (else each is saved again after its first NOTIFY). Dialogs
// already here are skipped; expired ones, or of users or lists gone, are
// deleted from the store. It returns how many it took.
func (s *Server) Adopt(recs []SavedSubscription, reserved bool) int {
	var taken []*Subscription
	for i := range recs {
		if sub := s.adoptOne(&recs[i], reserved); sub != nil {
			taken = append(taken, sub)
		}
	}
	for _, sub := range taken {
		s.enqueue(sub, time.Time{}, true)
	}
	if len(taken) > 0 {
		s.log.Info("adopted subscription dialogs", "count", len(taken))
	}
	return len(taken)
}

// adoptOne makes a subscription of a record and holds it (no NOTIFY);
// nil for one held here already or not installed (install).
func (s *Server) adoptOne(r *SavedSubscription, reserved bool) *Subscription {
	sub, outcome := s.install(r, time.Now(), true)
	if outcome != installed {
		return nil
	}
	if reserved {
		// The store holds Reserved(r): the reservations run from there,
		// and the record saved here (to this node's own file) is that
		// one, taken before any NOTIFY moves the counters on, so that
		// the cluster's store sees it holds it already and writes nothing.
		sub.mu.Lock()
		rec := sub.saved()
		sub.mu.Unlock()
		s.journal.record(rec)
		return sub
	}
	s.journal.subscription(sub, true)
	return sub
}

// installOutcome is what became of a stored dialog offered to install.
type installOutcome int

const (
	installed      installOutcome = iota
	installHeld                   // a dialog of that id is held here already
	installRefused                // lapsed, unreadable, of a user or list gone: forgotten in the store
	installRevoked                // its watcher may no longer watch: ended (a final NOTIFY)
)

// install is the one way a stored dialog becomes a live one, at a start
// (restore), when a failover hands it over (Adopt) and when a refresh
// brings another node's dialog here (a claim): made from its record, put
// in the store and the expiry wheel, counted for watcher info, and
// ended at once when the config no longer lets its watcher watch. now
// says what has lapsed. announce tells the lifecycle's observers at
// once (watcher info); a start tells them once every dialog is back
// (settled). No NOTIFY is sent.
func (s *Server) install(r *SavedSubscription, now time.Time, announce bool) (*Subscription, installOutcome) {
	if _, here := s.subs.get(r.ID); here {
		return nil, installHeld
	}
	if !r.Expires.After(now) {
		s.journal.forget(r.ID) // lapsed: not even read
		return nil, installRefused
	}
	sub, err := restoredSubscription(r, s.packages, s.strs)
	if err != nil {
		s.log.Warn("a stored dialog cannot be read: deleted", "id", r.ID, "err", err)
	}
	known := false
	if err == nil {
		dir := s.states.Directory()
		if r.List != "" {
			var rl *bridge.ResolvedList
			if rl, known = dir.List(r.List); known {
				known = sub.restoreList(s.strs, rl)
			}
		} else {
			_, known = dir.User(r.UserID)
		}
	}
	// One this node will never hold is deleted from the store: nobody
	// else would.
	if err != nil || !known {
		s.journal.forget(r.ID)
		return nil, installRefused
	}
	sub.LocalHost, sub.LocalPort = s.localAddr(sub.Transport, sub.Source)
	sub.LocalHost = s.strs.get(sub.LocalHost)
	if !s.subs.add(sub, 0) {
		return nil, installHeld
	}
	s.began(sub, true, !announce)
	s.expiry.add(sub, sub.expires)
	if reason := s.auth.revoked(sub.Grant, sub.Source, sub.Watcher); reason != "" {
		// The config changed since the dialog was made (while we were
		// down, or on the node that held it): the watcher is told at
		// once.
		s.log.Info("stored subscription no longer allowed: ending it", "user", sub.UserID,
			"watcher", sub.Watcher, "source", sub.Source, "reason", reason)
		s.terminate(sub, reason)
		return nil, installRevoked
	}
	return sub, installed
}

// Forget drops dialogs this node no longer owns (another node took them
// over), with no NOTIFY: their new owner speaks for them now.
func (s *Server) Forget(ids []string) int {
	n := 0
	for _, id := range ids {
		sub, ok := s.subs.get(id)
		if !ok {
			continue
		}
		sub.mu.Lock()
		dropped := !sub.removed
		if dropped {
			markDropped(sub) // as a NOTIFY refused (notifyDone) does
			n++
		}
		sub.mu.Unlock()
		if dropped {
			s.unlist(sub, "timeout")
		}
	}
	if n > 0 {
		s.log.Info("dialogs taken over by another node: forgotten here", "count", n)
	}
	return n
}

// SubscriptionIDs lists the dialogs this node holds.
func (s *Server) SubscriptionIDs() []string {
	subs := s.subs.all()
	out := make([]string, 0, len(subs))
	for _, sub := range subs {
		out = append(out, sub.ID)
	}
	slices.Sort(out)
	return out
}

// Resave hands the given dialogs to the Store again (the cluster lost
// them: a node's write that never reached the engine).
func (s *Server) Resave(ids []string) {
	for _, id := range ids {
		if sub, ok := s.subs.get(id); ok {
			s.journal.subscription(sub, true)
		}
	}
}
