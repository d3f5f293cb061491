package presence

import (
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// Subscription is one subscription dialog (RFC 6665): SIP's dialog helpers
// in sipgo are INVITE-only, so this type is the whole dialog state: ids,
// route set, remote target, our CSeq and the dialog-info version.
type Subscription struct {
	// Immutable after creation.
	ID        string // our tag (To-tag of the 200, From-tag of NOTIFYs)
	CallID    string
	RemoteTag string
	UserID    string // the watched user ("" for a list)
	// List is the name of the list (RFC 4662) it watches, "" for one
	// user (list.go).
	List      string
	Entity    string // the presentity URI as subscribed
	Package   Package
	EventID   string // the Event header's id parameter, echoed back
	Accept    string // the SUBSCRIBE's Accept header, as sent
	LocalURI  string // ours: the SUBSCRIBE's To URI, From of NOTIFYs
	RemoteURI string // theirs: the SUBSCRIBE's From URI, To of NOTIFYs
	Transport string // UDP, TCP or TLS
	Source    string // host:port the SUBSCRIBE came from
	Watcher   string // authenticated user id of the subscriber ("" if trusted and unknown)
	Grant     string // what let the watcher in (authenticator.grant), checked again at reload
	UserAgent string
	// MediaType is what its NOTIFYs carry, as its package negotiated
	// it from Accept (XPIDF for older Polycom and Cisco phones).
	MediaType string
	// LocalHost and LocalPort are our address as this subscriber reaches
	// it (Via and Contact), worked out once when the dialog is made.
	LocalHost string
	LocalPort int

	pkg eventPackage // Package's

	// mu guards the dialog's changing state (below). Taken under the
	// bridge lock (HandleChange); under it only the journal's, the
	// interner's and notifytx's randMu. Never under it: the store's,
	// the publications', the registrar's, the pacing and watcher-info
	// locks, the bridge, a network write or a TCP dial.
	mu sync.Mutex
	// list is what a list subscription shows (list.go), set when it is
	// made and never after; nil for any other.
	list *listView
	// pkg holds what the subscription's package keeps of its own (as-
	// feature-event's answer to come, watcher info's list), made by the
	// package; nil for most (presence, dialog).
	pkgState   *packageState
	target     string   // remote target (Contact URI), refreshed by re-SUBSCRIBE
	targetAddr string   // host:port of target
	routes     []string // route set from Record-Route, as URIs
	routeAddr  string   // host:port of the first route, "" without routes
	remoteCSeq uint32
	cseq       uint32 // last NOTIFY CSeq sent
	version    uint32 // next dialog-info version
	// savedCSeq and savedVersion are the reservations last handed to the
	// Store: going past either asks for an early save.
	savedCSeq, savedVersion uint32
	failures                int32     // consecutive failed NOTIFYs
	warnedSize              bool      // told the log its NOTIFYs do not fit a datagram
	expires                 time.Time // when the subscription lapses (see expiryWheel)
	final                   string    // reason of the terminating NOTIFY still to send
	// changedAt is the first unsent change, for the latency metric, as
	// time since the server's epoch (monotonic; 0: none).
	changedAt time.Duration
	lastState *bridge.State // state rendered in the last NOTIFY

	// The flags last, side by side: a subscription is the server's
	// largest object by count, and each flag placed between wider fields
	// would cost a word of padding.

	Single bool // one dialog per dialog-info document
	// DNDText: a client that reads dnd from the text in <rpid:busy>
	// (Linphone); from User-Agent.
	DNDText    bool
	dirty      bool // state changed since the last NOTIFY was built
	unanswered bool // the SUBSCRIBE's 2xx has not left yet: NOTIFYs wait for it
	queued     bool // waiting in the send queue
	inflight   bool // a NOTIFY transaction is under way
	done       bool // terminated and final NOTIFY sent
	removed    bool // gone from the store
	force      bool // send even if the state is unchanged
}

// packageState boxes what a package keeps on a subscription of its
// own: one word on each subscription, and the box only where a package
// keeps something.
type packageState struct{ v any }

// packageState returns what sub's package keeps on it (nil: nothing).
// Called with s.mu held.
func (s *Subscription) packageState() any {
	if s.pkgState == nil {
		return nil
	}
	return s.pkgState.v
}

// setPackageState sets what sub's package keeps on it. Called with s.mu
// held.
func (s *Subscription) setPackageState(v any) {
	if s.pkgState == nil {
		s.pkgState = &packageState{}
	}
	s.pkgState.v = v
}

// listUsers are the users the store holds a list subscription under
// (its members; none for any other). Called with the store's mu held.
func (s *Subscription) listUsers() []string {
	if s.list == nil {
		return nil
	}
	return s.list.indexed
}

// sourceIP returns the host of Source, the unit of the per-source limit.
func (s *Subscription) sourceIP() string { return hostOnly(s.Source) }

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// store holds every subscription with indices by id, watched user and
// source address.
type store struct {
	mu       sync.RWMutex // guards the indices; a leaf (reads only what never changes of a subscription)
	byID     map[string]*Subscription
	byUser   map[string]map[*Subscription]struct{}
	bySource map[string]int // by source IP
	byStream map[string]int // TCP/TLS subscriptions by source address (host:port)
	// byKind counts them as they come and go: a metrics scrape reads it
	// instead of walking every subscription under the lock.
	byKind map[SubscriptionKind]int
}

func newStore() *store {
	return &store{
		byID:     map[string]*Subscription{},
		byUser:   map[string]map[*Subscription]struct{}{},
		bySource: map[string]int{},
		byStream: map[string]int{},
		byKind:   map[SubscriptionKind]int{},
	}
}

// kind is what s is counted under (its package, transport and whether
// it watches a list never change).
func (s *Subscription) kind() SubscriptionKind {
	return SubscriptionKind{s.Package, s.Transport, s.List != ""}
}

// add inserts s unless its source already has max subscriptions or
// another subscription has its id.
func (st *store) add(s *Subscription, max int) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch st.byID[s.ID] {
	case s:
		return true // held already
	case nil:
	default:
		return false // another subscription has its id: the indices stay whole
	}
	ip := s.sourceIP()
	if max > 0 && st.bySource[ip] >= max {
		return false
	}
	st.byID[s.ID] = s
	if s.List == "" {
		st.index(s, s.UserID)
	}
	for _, id := range s.listUsers() {
		st.index(s, id)
	}
	st.bySource[ip]++
	if s.Transport != "UDP" {
		st.byStream[s.Source]++
	}
	st.byKind[s.kind()]++
	return true
}

// remove takes s out of every index; it reports whether s was there.
func (st *store) remove(s *Subscription) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.byID[s.ID] != s {
		return false
	}
	delete(st.byID, s.ID)
	if s.List == "" {
		st.unindex(s, s.UserID)
	}
	for _, id := range s.listUsers() {
		st.unindex(s, id)
	}
	ip := s.sourceIP()
	if st.bySource[ip]--; st.bySource[ip] <= 0 {
		delete(st.bySource, ip)
	}
	if s.Transport != "UDP" {
		if st.byStream[s.Source]--; st.byStream[s.Source] <= 0 {
			delete(st.byStream, s.Source)
		}
	}
	if k := s.kind(); st.byKind[k] <= 1 {
		delete(st.byKind, k)
	} else {
		st.byKind[k]--
	}
	return true
}

// index and unindex add and take s under a user; called with mu held.
func (st *store) index(s *Subscription, userID string) {
	m := st.byUser[userID]
	if m == nil {
		m = map[*Subscription]struct{}{}
		st.byUser[userID] = m
	}
	m[s] = struct{}{}
}

func (st *store) unindex(s *Subscription, userID string) {
	if m := st.byUser[userID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(st.byUser, userID)
		}
	}
}

// reindex sets the users a list subscription is held under (while it is
// in the store); it returns the users added and gone.
func (st *store) reindex(s *Subscription, users []string) (added, gone []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s.list == nil {
		return nil, nil // not a list subscription
	}
	in := st.byID[s.ID] == s
	for _, id := range users {
		if !slices.Contains(s.list.indexed, id) {
			added = append(added, id)
			if in {
				st.index(s, id)
			}
		}
	}
	for _, id := range s.list.indexed {
		if !slices.Contains(users, id) {
			gone = append(gone, id)
			if in {
				st.unindex(s, id)
			}
		}
	}
	s.list.indexed = slices.Clone(users)
	return added, gone
}

// usersOf returns the users a list subscription is (or was last) held
// under.
func (st *store) usersOf(s *Subscription) []string {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return slices.Clone(s.listUsers())
}

// holdsStream reports whether a stream connection from source carries
// any subscription (its NOTIFYs go back on it).
func (st *store) holdsStream(source string) bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.byStream[source] > 0
}

func (st *store) get(id string) (*Subscription, bool) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	s, ok := st.byID[id]
	return s, ok
}

// watchers returns the subscriptions to a user.
func (st *store) watchers(userID string, dst []*Subscription) []*Subscription {
	st.mu.RLock()
	defer st.mu.RUnlock()
	for s := range st.byUser[userID] {
		dst = append(dst, s)
	}
	return dst
}

// count returns the number of subscriptions, per package.
func (st *store) count() (total int, byPackage map[Package]int) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	byPackage = map[Package]int{}
	for k, n := range st.byKind {
		byPackage[k.Package] += n
	}
	return len(st.byID), byPackage
}

// SubscriptionKind is an event package and a transport, and whether
// the subscriptions are to lists (RFC 4662).
type SubscriptionKind struct {
	Package   Package
	Transport string // UDP, TCP or TLS
	List      bool
}

// countByKind returns the number of subscriptions per package and
// transport.
func (st *store) countByKind() map[SubscriptionKind]int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return maps.Clone(st.byKind)
}

// all returns every subscription.
func (st *store) all() []*Subscription {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]*Subscription, 0, len(st.byID))
	for _, s := range st.byID {
		out = append(out, s)
	}
	return out
}

// shows reports whether st is news to the subscriber: another state than
// its last NOTIFY's, in the part its package shows. Called with mu held.
func (sub *Subscription) shows(st *bridge.State) bool {
	if st == sub.lastState {
		return false
	}
	if cf, ok := sub.pkg.(changeFilter); ok {
		return cf.Differs(sub, sub.lastState, st)
	}
	return true
}
