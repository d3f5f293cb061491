package presence

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/presence/body"
)

// Watcher information (package_winfo.go) changes when subscriptions to a
// person come and go, which happens under locks that the store's must not
// be taken under (doc.go's lock order): so a change only notes the user
// (and any watcher that ended), and a worker of its own lists the user's
// watchers afresh, outside every lock, hands the list to each watcher-info
// subscription and NOTIFYs it. With no watcher-info subscription at all,
// noting costs one atomic load.

// watchesWatchers is a package whose documents list its user's watchers.
type watchesWatchers interface{ WatchesWatchers() }

// winfoState is the Server's part of the above, and an observer of the
// subscriptions' lifecycle (lifecycle.go).
type winfoState struct {
	s     *Server
	live  atomic.Int64              // watcher-info subscriptions
	mu    sync.Mutex                // guards dirty; a leaf (taken under the bridge lock)
	dirty map[string][]endedWatcher // user → watchers ended since the last NOTIFY
	wake  chan struct{}
}

// endedWatcher is a watcher to show as terminated once: the ended
// subscription and why. It is rendered later, by runWinfo: who a watcher
// is may take the directory, which the bridge's lock guards, and a
// subscription often ends inside the bridge's change (a user removed),
// with that lock held.
type endedWatcher struct {
	sub    *Subscription
	reason string
}

// watchersChanged notes that the watchers of a user changed; ended is a
// subscription that ended (nil for one that began), reason why.
func (s *Server) watchersChanged(userID string, ended *Subscription, reason string) {
	if ended != nil {
		if _, ww := ended.pkg.(watchesWatchers); ww {
			s.winfo.live.Add(-1)
			return
		}
	}
	if s.winfo.live.Load() == 0 {
		return
	}
	s.winfo.mu.Lock()
	if s.winfo.dirty == nil {
		s.winfo.dirty = map[string][]endedWatcher{}
	}
	gone := s.winfo.dirty[userID]
	if ended != nil && listsWatchers(ended.pkg) {
		gone = append(gone, endedWatcher{ended, reason})
	}
	s.winfo.dirty[userID] = gone
	s.winfo.mu.Unlock()
	select {
	case s.winfo.wake <- struct{}{}:
	default:
	}
}

// watcherURI is who a watcher is, as far as Lamplighter knows it (RFC
// 3857 §5.3: the identity the server authenticated, not what the
// SUBSCRIBE's From claims): the digest username that passed, or the user
// whose registered flow let it in (their first extension), in the realm;
// only a watcher on a trusted network, which nothing authenticated, is
// named by its From.
func (s *Server) watcherURI(sub *Subscription) string {
	if rest, ok := strings.CutPrefix(sub.Grant, "digest:"); ok {
		if user, _, ok := strings.Cut(rest, ":"); ok && user != "" {
			return "sip:" + user + "@" + s.opt.Realm
		}
	}
	if sub.Grant == grantFlow && sub.Watcher != "" {
		user := sub.Watcher
		if u, ok := s.states.Directory().User(sub.Watcher); ok && len(u.Extensions) > 0 {
			user = u.Extensions[0]
		}
		return "sip:" + user + "@" + s.opt.Realm
	}
	return sub.RemoteURI
}

// winfoEvent is RFC 3858's event for why a subscription ended.
func winfoEvent(reason string) string {
	switch reason {
	case "rejected", "deactivated", "noresource", "giveup", "probation":
		return reason
	}
	return "timeout" // expired, unsubscribed, or the subscriber is gone
}

// listsWatchers reports whether subscriptions of a package are watchers
// a person is told of: those that show the person to others (not the
// person's own phone's feature keys or watcher lists).
func listsWatchers(p eventPackage) bool {
	_, own := p.(ownOnly)
	return !own
}

// runWinfo sends watcher-info NOTIFYs as watchers change, until ctx ends.
func (s *Server) runWinfo(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.winfo.wake:
		}
		s.winfo.mu.Lock()
		dirty := s.winfo.dirty
		s.winfo.dirty = nil
		s.winfo.mu.Unlock()
		for userID, gone := range dirty {
			s.sendWinfo(userID, gone)
		}
	}
}

// sendWinfo lists a user's watchers and NOTIFYs each of the user's
// watcher-info subscriptions with them.
func (s *Server) sendWinfo(userID string, gone []endedWatcher) {
	subs := s.subs.watchers(userID, nil)
	lists := s.watcherLists(subs, gone)
	for _, sub := range subs {
		if _, ww := sub.pkg.(watchesWatchers); !ww {
			continue
		}
		sub.mu.Lock()
		showWatchers(sub, lists)
		sub.mu.Unlock()
		s.enqueue(sub, time.Time{}, true)
	}
}

// watcherLists is the watchers of subs (active) and gone (terminated), a
// list per package that shows its user to others, in a stable order.
func (s *Server) watcherLists(subs []*Subscription, gone []endedWatcher) []body.WatcherList {
	byPkg := map[Package][]body.Watcher{}
	for _, sub := range subs {
		if listsWatchers(sub.pkg) {
			// ID, Grant, Watcher and the package never change: read
			// unlocked.
			byPkg[sub.Package] = append(byPkg[sub.Package],
				body.Watcher{ID: sub.ID, URI: s.watcherURI(sub), Status: "active", Event: "subscribe"})
		}
	}
	for _, g := range gone {
		byPkg[g.sub.Package] = append(byPkg[g.sub.Package],
			body.Watcher{ID: g.sub.ID, URI: s.watcherURI(g.sub), Status: "terminated", Event: winfoEvent(g.reason)})
	}
	var out []body.WatcherList
	for _, p := range s.packages.list {
		if !listsWatchers(p) {
			continue
		}
		ws := byPkg[p.Token()]
		slices.SortFunc(ws, func(a, b body.Watcher) int { return strings.Compare(a.ID, b.ID) })
		out = append(out, body.WatcherList{Package: p.Token().String(), Watchers: ws})
	}
	return out
}

// began implements lifecycle: a watcher-info subscription is counted
// (while held) and given its lists (unless quiet); any other is news to
// its user's, or its list members', watcher-info subscriptions.
func (w *winfoState) began(sub *Subscription, held, quiet bool) {
	s := w.s
	if _, ww := sub.pkg.(watchesWatchers); ww {
		if held {
			w.live.Add(1)
		}
		if !quiet {
			w.relist(sub)
		}
		return
	}
	if held && !quiet {
		s.noteWatched(sub, false, "")
	}
}

// settled implements lifecycle: after a start, each watcher-info
// subscription lists the watchers now all back.
func (w *winfoState) settled(subs []*Subscription) {
	for _, sub := range subs {
		if _, ww := sub.pkg.(watchesWatchers); ww {
			w.relist(sub)
		}
	}
}

// relist gives a watcher-info subscription the lists of its user's
// watchers as they are now.
func (w *winfoState) relist(sub *Subscription) {
	lists := w.s.watcherLists(w.s.subs.watchers(sub.UserID, nil), nil)
	sub.mu.Lock()
	showWatchers(sub, lists)
	sub.mu.Unlock()
}

// membersChanged implements lifecycle: the members a list watches now
// have one watcher more, those it no longer watches one less.
func (w *winfoState) membersChanged(sub *Subscription, added, gone []string) {
	for _, id := range added {
		w.s.watchersChanged(id, nil, "")
	}
	for _, id := range gone {
		w.s.watchersChanged(id, sub, "deactivated")
	}
}

// ended implements lifecycle.
func (w *winfoState) ended(sub *Subscription, reason string) { w.s.noteWatched(sub, true, reason) }

// noteWatched tells watcher info that sub began (ended false) or ended:
// news to its user, or to every member of its list.
func (s *Server) noteWatched(sub *Subscription, ended bool, reason string) {
	var e *Subscription
	if ended {
		e = sub
	}
	if sub.List == "" {
		s.watchersChanged(sub.UserID, e, reason)
		return
	}
	for _, id := range s.subs.usersOf(sub) {
		s.watchersChanged(id, e, reason)
	}
}
