package presence

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Store keeps the server's subscription dialogs, publications and
// registrations across restarts (presence/durable is the bbolt one). The
// server calls Save from one goroutine with what changed since the last
// call, at most once per Options.FlushInterval and never from the NOTIFY
// path; a failed Save is retried with the next batch.
type Store interface {
	Save(Batch) error
}

// Batch is what changed since the last Save.
type Batch struct {
	Subscriptions []SavedSubscription
	Unsubscribed  []string // ids of subscriptions gone
	Publications  []Publication
	Unpublished   []string // entity tags gone
	// Bindings holds, for each user whose registrations changed, all of
	// the user's current bindings (none: forget the user's bindings).
	Bindings map[string][]Binding
}

// Empty reports whether the batch has nothing to save.
func (b *Batch) Empty() bool {
	return len(b.Subscriptions) == 0 && len(b.Unsubscribed) == 0 && len(b.Publications) == 0 &&
		len(b.Unpublished) == 0 && len(b.Bindings) == 0
}

// Saved is what a Store held at start-up, handed to Options.Restore.
type Saved struct {
	Subscriptions []SavedSubscription
	Publications  []Publication
	Bindings      []Binding
}

// SavedSubscription is a subscription dialog as stored: enough to send the
// subscriber an in-dialog NOTIFY after a restart and to accept its
// refreshes.
type SavedSubscription struct {
	ID         string    `json:"id"`
	CallID     string    `json:"call_id"`
	RemoteTag  string    `json:"remote_tag"`
	UserID     string    `json:"user"`
	List       string    `json:"list,omitempty"` // a list subscription's list (RFC 4662)
	Entity     string    `json:"entity"`
	Package    Package   `json:"package"`
	EventID    string    `json:"event_id,omitempty"`
	Accept     string    `json:"accept,omitempty"`
	LocalURI   string    `json:"local_uri"`
	RemoteURI  string    `json:"remote_uri"`
	Target     string    `json:"target"`
	Routes     []string  `json:"routes,omitempty"`
	Transport  string    `json:"transport"`
	Source     string    `json:"source"`
	Watcher    string    `json:"watcher,omitempty"`
	Grant      string    `json:"grant,omitempty"`
	UserAgent  string    `json:"user_agent,omitempty"`
	Single     bool      `json:"single,omitempty"`
	Expires    time.Time `json:"expires"`
	RemoteCSeq uint32    `json:"remote_cseq"`
	// CSeq and Version are reservations: at least the last NOTIFY CSeq
	// sent and the next dialog-info version, so that after a crash both
	// continue upward (see cseqReserve).
	CSeq    uint32 `json:"cseq"`
	Version uint32 `json:"version"`
}

// cseqReserve is how far ahead of the NOTIFYs actually sent the stored
// CSeq and version run. A subscription is saved again once it uses its
// reserve, so a crash can lose at most the NOTIFYs of one flush interval
// and those are far fewer than this (changes of one user are coalesced).
// Watchers see a gap in CSeq and version after a restart; both only grow.
const cseqReserve = 64

// DefaultFlushInterval is how often changes are handed to the Store.
const DefaultFlushInterval = time.Second

// saved returns the record of s; called with s.mu held.
func (s *Subscription) saved() SavedSubscription {
	r := SavedSubscription{
		ID: s.ID, CallID: s.CallID, RemoteTag: s.RemoteTag, UserID: s.UserID, List: s.List, Entity: s.Entity,
		Package: s.Package, EventID: s.EventID, Accept: s.Accept,
		LocalURI: s.LocalURI, RemoteURI: s.RemoteURI, Target: s.target,
		Transport: s.Transport, Source: s.Source, Watcher: s.Watcher, Grant: s.Grant, UserAgent: s.UserAgent,
		Single: s.Single, Expires: s.expires, RemoteCSeq: s.remoteCSeq,
		CSeq: s.cseq + cseqReserve, Version: s.version + cseqReserve,
	}
	r.Routes = append(r.Routes, s.routes...)
	s.savedCSeq, s.savedVersion = r.CSeq, r.Version
	return r
}

// journal gathers what changed for the Store and saves it in batches.
type journal struct {
	store Store
	every time.Duration
	log   *slog.Logger

	// mu guards what is pending; a leaf, taken under Subscription.mu,
	// the publications' and the registrar's locks. flush takes each
	// subscription's lock after releasing it.
	mu   sync.Mutex
	subs map[*Subscription]struct{}
	// records are subscriptions saved as they were when marked, not as
	// they are at the save (an adopted dialog: its record must match the
	// one the cluster holds, whatever NOTIFY went out since).
	records map[string]SavedSubscription
	unsub   map[string]struct{}
	pubs    map[string]*Publication // nil value: gone
	users   map[string]struct{}     // users whose bindings changed
	soon    chan struct{}
	// saving is the size of the batch being written (still unsaved).
	saving int
}

// unsaved counts the changes not yet written.
func (j *journal) unsaved() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.subs) + len(j.records) + len(j.unsub) + len(j.pubs) + len(j.users) + j.saving
}

func newJournal(store Store, every time.Duration, log *slog.Logger) *journal {
	j := &journal{store: store, every: every, log: log, soon: make(chan struct{}, 1)}
	j.reset()
	return j
}

func (j *journal) reset() {
	j.subs = map[*Subscription]struct{}{}
	j.records = map[string]SavedSubscription{}
	j.unsub = map[string]struct{}{}
	j.pubs = map[string]*Publication{}
	j.users = map[string]struct{}{}
}

// subscription marks a subscription as changed; urgent asks for an early
// save (its CSeq reserve is used up).
func (j *journal) subscription(s *Subscription, urgent bool) {
	if j == nil {
		return
	}
	j.mu.Lock()
	j.subs[s] = struct{}{}
	j.mu.Unlock()
	if urgent {
		select {
		case j.soon <- struct{}{}:
		default:
		}
	}
}

// record marks a subscription as changed, to be saved as rec (what it
// is now) unless it changes again before the save.
func (j *journal) record(rec SavedSubscription) {
	if j == nil {
		return
	}
	j.mu.Lock()
	j.records[rec.ID] = rec
	j.mu.Unlock()
}

func (j *journal) unsubscribed(s *Subscription) {
	if j == nil {
		return
	}
	j.mu.Lock()
	delete(j.subs, s)
	delete(j.records, s.ID)
	j.unsub[s.ID] = struct{}{}
	j.mu.Unlock()
}

// forget deletes a stored subscription that is not restored.
func (j *journal) forget(id string) {
	if j == nil {
		return
	}
	j.mu.Lock()
	j.unsub[id] = struct{}{}
	j.mu.Unlock()
}

func (j *journal) publication(etag string, p *Publication) {
	if j == nil {
		return
	}
	j.mu.Lock()
	j.pubs[etag] = p
	j.mu.Unlock()
}

func (j *journal) bindings(userID string) {
	if j == nil {
		return
	}
	j.mu.Lock()
	j.users[userID] = struct{}{}
	j.mu.Unlock()
}

// run saves a batch every interval (sooner when asked) until ctx ends;
// the caller flushes once more after the listeners have closed.
func (j *journal) run(ctx context.Context, regs *registrar) {
	t := time.NewTicker(j.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-j.soon:
		}
		j.flush(regs)
	}
}

// flush hands everything pending to the Store; on failure it stays
// pending for the next try.
func (j *journal) flush(regs *registrar) {
	j.mu.Lock()
	subs, records, unsub, pubs, users := j.subs, j.records, j.unsub, j.pubs, j.users
	j.saving = len(subs) + len(records) + len(unsub) + len(pubs) + len(users)
	j.reset()
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		j.saving = 0
		j.mu.Unlock()
	}()
	b := Batch{Subscriptions: make([]SavedSubscription, 0, len(subs)+len(records))}
	for sub := range subs {
		sub.mu.Lock()
		delete(records, sub.ID) // changed since: saved as it is now
		if sub.removed {
			sub.mu.Unlock()
			unsub[sub.ID] = struct{}{}
			continue
		}
		b.Subscriptions = append(b.Subscriptions, sub.saved())
		sub.mu.Unlock()
	}
	for id, rec := range records {
		if _, gone := unsub[id]; !gone {
			b.Subscriptions = append(b.Subscriptions, rec)
		}
	}
	for id := range unsub {
		b.Unsubscribed = append(b.Unsubscribed, id)
	}
	for tag, p := range pubs {
		if p == nil {
			b.Unpublished = append(b.Unpublished, tag)
		} else {
			b.Publications = append(b.Publications, *p)
		}
	}
	if len(users) > 0 {
		b.Bindings = map[string][]Binding{}
		regs.mu.Lock()
		now := time.Now()
		for id := range users {
			b.Bindings[id] = append([]Binding(nil), regs.current(id, now)...)
		}
		regs.mu.Unlock()
	}
	if b.Empty() {
		return
	}
	if err := j.store.Save(b); err != nil {
		j.log.Warn("cannot save subscriptions: will retry", "err", err)
		j.mu.Lock()
		for sub := range subs {
			j.subs[sub] = struct{}{}
		}
		for id, rec := range records {
			if _, newer := j.records[id]; !newer {
				j.records[id] = rec
			}
		}
		for id := range unsub {
			if _, again := j.unsub[id]; !again {
				j.unsub[id] = struct{}{}
			}
		}
		for tag, p := range pubs {
			if _, newer := j.pubs[tag]; !newer {
				j.pubs[tag] = p
			}
		}
		for id := range users {
			j.users[id] = struct{}{}
		}
		j.mu.Unlock()
	}
}

// UnsavedChanges returns how many changes to subscriptions, publications
// and registrations are not yet in the Store (0 without one).
func (s *Server) UnsavedChanges() int {
	if s.journal == nil {
		return 0
	}
	return s.journal.unsaved()
}

// restore brings back what the Store held: unexpired subscriptions (with
// their expiry timers, waiting for NotifyRestored), publications and
// bindings. Called from Run after the listeners are bound and before they
// serve, so that no refresh can miss its dialog.
func (s *Server) restore(saved *Saved) {
	now := time.Now()
	var subs, skipped, revoked int
	for i := range saved.Subscriptions {
		sub, outcome := s.install(&saved.Subscriptions[i], now, false)
		switch outcome {
		case installRefused:
			skipped++
		case installRevoked:
			revoked++
		case installed:
			s.restored = append(s.restored, sub)
			subs++
		}
	}
	// Watcher information lists the watchers now all back.
	s.settled(s.restored)
	// Publications and bindings come back within the caps, the newest
	// first; what is over a cap (saved before it was lowered) or gone is
	// forgotten in the store too.
	pubs, dropped := 0, 0
	byUser := map[string][]*Publication{}
	for i := range saved.Publications {
		p := &saved.Publications[i]
		if p.Expires.After(now) {
			byUser[p.UserID] = append(byUser[p.UserID], p)
		}
	}
	// The bridge is called with no lock of ours held (doc.go): each
	// publication's state is set first, and the publications kept are
	// added under the lock after.
	var kept []*Publication
	for userID, ps := range byUser {
		slices.SortFunc(ps, func(a, b *Publication) int { return b.Expires.Compare(a.Expires) })
		for i, p := range ps {
			if i >= s.opt.MaxPublicationsPerUser {
				s.journal.publication(p.ETag, nil)
				dropped++
				continue
			}
			if err := s.states.SetPerson(userID, p.origin(), p.Person); err != nil {
				s.journal.publication(p.ETag, nil) // the user is gone
				dropped++
				continue
			}
			kept = append(kept, p)
		}
	}
	s.pubs.mu.Lock()
	for _, p := range kept {
		s.pubs.add(p)
	}
	s.pubs.mu.Unlock()
	pubs = len(kept)
	binds := 0
	s.regs.mu.Lock()
	for _, b := range saved.Bindings {
		if b.Expires.After(now) {
			s.regs.byUser[b.UserID] = append(s.regs.byUser[b.UserID], b)
		}
	}
	for userID, bs := range s.regs.byUser {
		if len(bs) > s.opt.MaxBindingsPerUser {
			slices.SortFunc(bs, func(a, b Binding) int { return b.Expires.Compare(a.Expires) })
			dropped += len(bs) - s.opt.MaxBindingsPerUser
			s.regs.byUser[userID] = bs[:s.opt.MaxBindingsPerUser]
			s.journal.bindings(userID)
		}
		binds += len(s.regs.byUser[userID])
	}
	s.regs.mu.Unlock()
	s.log.Info("restored saved state", "subscriptions", subs, "skipped", skipped, "revoked", revoked, "publications", pubs,
		"registrations", binds, "over_limits", dropped)
}

// restoredSubscription rebuilds a subscription from its record.
func restoredSubscription(r *SavedSubscription, ps *packages, in *interner) (*Subscription, error) {
	if r.Package == "" {
		r.Package = PackagePresence // what an absent package was before tokens
	}
	pkg, ok := ps.lookup(r.Package)
	if !ok {
		return nil, fmt.Errorf("event package %q is not served", r.Package)
	}
	mediaType, ok := pkg.Negotiate(r.Accept)
	if !ok {
		mediaType = pkg.MediaTypes()[0]
	}
	if r.List != "" {
		if mediaType, ok = negotiateList(pkg, r.Accept); !ok {
			mediaType = pkg.MediaTypes()[0]
		}
	}
	sub := &Subscription{
		pkg: pkg, MediaType: mediaType,
		ID: r.ID, CallID: r.CallID, RemoteTag: r.RemoteTag, UserID: r.UserID, List: r.List, Entity: r.Entity,
		Package: r.Package, EventID: r.EventID, Accept: r.Accept, Transport: r.Transport, Source: r.Source,
		Watcher: r.Watcher, Grant: r.Grant, UserAgent: r.UserAgent, Single: r.Single,
		remoteCSeq: r.RemoteCSeq, cseq: r.CSeq, version: r.Version, expires: r.Expires,
		savedCSeq: r.CSeq, savedVersion: r.Version,
	}
	var local, remote, target sipmsg.URI
	for _, p := range []struct {
		in  string
		out *sipmsg.URI
	}{{r.LocalURI, &local}, {r.RemoteURI, &remote}, {r.Target, &target}} {
		var err error
		if *p.out, err = sipmsg.ParseURI(p.in); err != nil {
			return nil, err
		}
	}
	sub.LocalURI, sub.RemoteURI = in.get(local.Raw), in.get(remote.Raw)
	sub.Entity, sub.Accept, sub.Transport, sub.Source = in.get(sub.Entity), in.get(sub.Accept), in.get(sub.Transport), in.get(sub.Source)
	sub.Grant, sub.UserAgent = in.get(sub.Grant), in.get(sub.UserAgent)
	sub.DNDText = body.WantsDNDText(sub.UserAgent)
	sub.setTarget(in, target)
	var routes []sipmsg.URI
	for _, rt := range r.Routes {
		u, err := sipmsg.ParseURI(rt)
		if err != nil {
			return nil, err
		}
		routes = append(routes, u)
	}
	sub.setRoutes(in, routes)
	return sub, nil
}

// restoreList readies a restored list subscription's view of rl; it
// reports false when its package takes no lists (a damaged record).
func (sub *Subscription) restoreList(in *interner, rl *bridge.ResolvedList) bool {
	if _, ok := sub.pkg.(listable); !ok {
		return false
	}
	sub.list = &listView{full: true}
	// The restored version is a reservation past any sent: members start
	// there (listMember.version).
	sub.list.resolve(in, rl, sub.Entity, sub.version)
	sub.list.indexed = sub.list.ids()
	return true
}

// NotifyRestored sends every subscription restored at start-up a NOTIFY
// with the current state. The daemon calls it once the PBXs have
// resynchronised (or a deadline passed), so that a restart does not flash
// every lamp to idle and back.
func (s *Server) NotifyRestored() int {
	s.restoreMu.Lock()
	subs := s.restored
	s.restored = nil
	s.restoreMu.Unlock()
	for _, sub := range subs {
		s.enqueue(sub, time.Time{}, true)
	}
	return len(subs)
}
