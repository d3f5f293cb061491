package bridge

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Change is emitted when a user's State changed.
type Change struct {
	// UserID is the user whose state changed.
	UserID string
	// State is the new state; nil when the user left the directory.
	State *State
	// Previous is the state before the change (nil for a new user).
	Previous *State
	// Urgent is set when a call started to ring: a change that must reach
	// the watchers at once, never coalesced or delayed.
	Urgent bool
}

// Listener receives changes. It is called synchronously, in order, with
// the bridge's lock held: it must return quickly and must not call back
// into the bridge (the Change carries everything it needs).
type Listener func(Change)

// device is what one source reported about one device.
type device struct {
	reported DeviceState
	calls    map[string]*Call // by Call.ID
}

// effective is the device's state: derived from its calls while it has
// any, else what the source reported.
func (d *device) effective() DeviceState {
	var agg Aggregator
	for _, c := range d.calls {
		switch {
		case c.Pending():
			continue
		case c.Alerting():
			agg.Add(DeviceRinging)
		case c.OnHold():
			agg.Add(DeviceOnHold)
		default:
			agg.Add(DeviceInUse)
		}
	}
	if st := agg.State(); st != DeviceInvalid {
		return st
	}
	return d.reported
}

// source is everything one PBX connection reported.
type source struct {
	devices map[string]*device // by device name
	calls   map[string]*Call   // by Call.ID
}

func newSource() *source {
	return &source{devices: map[string]*device{}, calls: map[string]*Call{}}
}

func (s *source) device(name string) *device {
	d, ok := s.devices[name]
	if !ok {
		d = &device{calls: map[string]*Call{}}
		s.devices[name] = d
	}
	return d
}

// Bridge holds the whole presence state. It is safe for concurrent use.
type Bridge struct {
	mu        sync.RWMutex
	now       func() time.Time
	dir       *Directory
	sources   map[string]*source
	persons   map[string]map[string]PersonState // user → origin → state
	states    map[string]*State                 // last emitted, by user id
	listeners []*Listener
}

// Option configures a Bridge.
type Option func(*Bridge)

// WithClock sets the clock used for person-state expiry (tests).
func WithClock(now func() time.Time) Option { return func(b *Bridge) { b.now = now } }

// New returns a bridge over the given directory.
func New(dir *Directory, opts ...Option) *Bridge {
	b := &Bridge{
		now:     time.Now,
		dir:     dir,
		sources: map[string]*source{},
		persons: map[string]map[string]PersonState{},
		states:  map[string]*State{},
	}
	for _, o := range opts {
		o(b)
	}
	for _, u := range dir.Users() {
		b.states[u.ID] = b.compute(u)
	}
	return b
}

// Listen registers a listener for changes and returns a function that
// removes it.
func (b *Bridge) Listen(l Listener) (cancel func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := &l
	b.listeners = append(b.listeners, p)
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.listeners = slices.DeleteFunc(b.listeners, func(x *Listener) bool { return x == p })
	}
}

// Directory returns the directory in force.
func (b *Bridge) Directory() *Directory {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.dir
}

// State returns a user's current state.
func (b *Bridge) State(userID string) (*State, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	s, ok := b.states[userID]
	return s, ok
}

// States returns every user's state in directory order.
func (b *Bridge) States() []*State {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]*State, 0, len(b.states))
	for _, u := range b.dir.Users() {
		out = append(out, b.states[u.ID])
	}
	return out
}

// Apply takes one event from a source.
func (b *Bridge) Apply(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	src, ok := b.sources[ev.SourceName()]
	if !ok {
		src = newSource()
		b.sources[ev.SourceName()] = src
	}
	touched := map[string]bool{} // device names
	switch e := ev.(type) {
	case DeviceStateChanged:
		src.device(e.Device).reported = e.State
		touched[e.Device] = true
	case CallUpdated:
		c := e.Call
		if old, ok := src.calls[c.ID]; ok && old.Device != c.Device {
			b.dropCall(src, old)
			touched[old.Device] = true
		}
		if c.State == CallTerminated {
			if old, ok := src.calls[c.ID]; ok {
				b.dropCall(src, old)
			}
		} else {
			src.calls[c.ID] = &c
			src.device(c.Device).calls[c.ID] = &c
		}
		touched[c.Device] = true
	case CallEnded:
		if old, ok := src.calls[e.CallID]; ok {
			b.dropCall(src, old)
			touched[old.Device] = true
		}
	case Snapshot:
		for name := range src.devices {
			touched[name] = true
		}
		src = newSource()
		b.sources[e.Source] = src
		for name, st := range e.Devices {
			src.device(name).reported = st
			touched[name] = true
		}
		for i := range e.Calls {
			c := e.Calls[i]
			if c.State == CallTerminated {
				continue
			}
			src.calls[c.ID] = &c
			src.device(c.Device).calls[c.ID] = &c
			touched[c.Device] = true
		}
	case SourceDown:
		for name := range src.devices {
			touched[name] = true
		}
		src = newSource()
		b.sources[e.Source] = src
		for _, u := range b.dir.Users() {
			for _, ref := range u.Devices {
				if ref.Source == e.Source {
					src.device(ref.Device).reported = DeviceUnavailable
					touched[ref.Device] = true
				}
			}
		}
	default:
		panic(fmt.Sprintf("bridge: unknown event type %T", ev))
	}
	users := map[*User]bool{}
	for name := range touched {
		if u, ok := b.dir.Owner(DeviceRef{Source: ev.SourceName(), Device: name}); ok {
			users[u] = true
		}
	}
	for u := range users {
		b.update(u)
	}
}

func (b *Bridge) dropCall(src *source, c *Call) {
	delete(src.calls, c.ID)
	if d, ok := src.devices[c.Device]; ok {
		delete(d.calls, c.ID)
	}
}

// CallBySIPID returns the call leg with the SIP Call-ID callID that a
// pickup with Replaces would take, for a proxy that must orient the
// Replaces tags (see Call.LocalTag): behind a proxy-only registrar both
// sides of a call share the Call-ID, and the leg that rings (incoming)
// is the one; else any leg with it. ok is false when no leg has it.
func (b *Bridge) CallBySIPID(callID string) (Call, bool) {
	if callID == "" {
		return Call{}, false
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	var found *Call
	for _, src := range b.sources {
		for _, c := range src.calls {
			if c.CallID != callID {
				continue
			}
			if c.Direction == Incoming {
				return *c, true
			}
			if found == nil {
				found = c
			}
		}
	}
	if found == nil {
		return Call{}, false
	}
	return *found, true
}

// SetPerson sets what one origin (a PUBLISH, the API) says about a user's
// person state, replacing that origin's earlier word.
func (b *Bridge) SetPerson(userID, origin string, p PersonState) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	u, ok := b.dir.User(userID)
	if !ok {
		return fmt.Errorf("unknown user %q", userID)
	}
	if p.Updated.IsZero() {
		p.Updated = b.now()
	}
	m := b.persons[userID]
	if m == nil {
		m = map[string]PersonState{}
		b.persons[userID] = m
	}
	m[origin] = p
	b.update(u)
	return nil
}

// ClearPerson removes what one origin said about a user.
func (b *Bridge) ClearPerson(userID, origin string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.persons[userID]
	if _, ok := m[origin]; !ok {
		return
	}
	delete(m, origin)
	if u, ok := b.dir.User(userID); ok {
		b.update(u)
	}
}

// Person returns what one origin said about a user.
func (b *Bridge) Person(userID, origin string) (PersonState, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	p, ok := b.persons[userID][origin]
	return p, ok
}

// Expire drops person states whose expiry has passed.
func (b *Bridge) Expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	for userID, m := range b.persons {
		changed := false
		for origin, p := range m {
			if !p.Expires.IsZero() && !p.Expires.After(now) {
				delete(m, origin)
				changed = true
			}
		}
		if u, ok := b.dir.User(userID); changed && ok {
			b.update(u)
		}
	}
}

// NextExpiry returns when the next person state expires (zero if none), so
// that the caller can schedule Expire.
func (b *Bridge) NextExpiry() time.Time {
	b.mu.RLock()
	defer b.mu.RUnlock()
	var next time.Time
	for _, m := range b.persons {
		for _, p := range m {
			if !p.Expires.IsZero() && (next.IsZero() || p.Expires.Before(next)) {
				next = p.Expires
			}
		}
	}
	return next
}

// SetDirectory replaces the directory (a reload). Users that are new,
// changed or gone get a Change; device and call state is kept, so a user
// who gains a device immediately shows that device's state.
func (b *Bridge) SetDirectory(dir *Directory) {
	// What the new directory names differently, and its users that are
	// the old one's (worked out before the lock: both directories are
	// immutable).
	old := b.Directory()
	renamed := renamedBetween(old, dir)
	dir = dir.sharing(old)
	var gone []string
	for _, u := range old.Users() {
		if _, ok := dir.User(u.ID); !ok {
			gone = append(gone, u.ID)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dir != old {
		// Another SetDirectory came between: look at every state.
		gone = gone[:0]
		for id := range b.states {
			if _, ok := dir.User(id); !ok {
				gone = append(gone, id)
			}
		}
	}
	b.dir = dir
	for _, id := range gone {
		if prev, ok := b.states[id]; ok {
			delete(b.states, id)
			delete(b.persons, id)
			b.emit(Change{UserID: id, Previous: prev})
		}
	}
	for _, u := range dir.Users() {
		// A user the directory left as it was is as it was, unless a
		// call of theirs is with someone the directory now names
		// differently (a call names its other party from the
		// directory): only the directory's entry is the new one. A
		// PBX's directory read again changes one user of ten thousand,
		// and the lock is held for that one.
		if prev, had := b.states[u.ID]; had && (prev.User == u || prev.User.Equal(u)) && !callsWithAny(prev, renamed) {
			if prev.User != u {
				st := *prev
				st.User = u
				b.states[u.ID] = &st
			}
			continue
		}
		b.update(u)
	}
}

// numbers are extensions by tenant (lower case).
type numbers map[string]map[string]bool

// renamedBetween returns the extensions of the users one directory has
// and the other has not, or has otherwise.
func renamedBetween(old, next *Directory) numbers {
	out := numbers{}
	add := func(u *User) {
		for _, e := range u.Extensions {
			if out[u.Tenant] == nil {
				out[u.Tenant] = map[string]bool{}
			}
			out[u.Tenant][nameKey(e)] = true
		}
	}
	for _, u := range next.Users() {
		if prev, ok := old.User(u.ID); !ok || !prev.Equal(u) {
			add(u)
			if ok {
				add(prev)
			}
		}
	}
	for _, u := range old.Users() {
		if _, ok := next.User(u.ID); !ok {
			add(u)
		}
	}
	return out
}

// callsWithAny reports whether a call of st is with one of the numbers.
func callsWithAny(st *State, ns numbers) bool {
	in := ns[st.User.Tenant]
	for _, c := range st.Calls {
		if in[nameKey(c.Remote.Number)] {
			return true
		}
	}
	return false
}

// update recomputes one user's state and emits a Change if it differs.
func (b *Bridge) update(u *User) {
	next := b.compute(u)
	prev, had := b.states[u.ID]
	if had && prev.Equal(next) {
		if prev.IDsPending && !next.IDsPending {
			// No document changes, but a watcher's NOTIFY held for
			// the ringing leg's ids waits no more (its source found
			// none).
			b.states[u.ID] = next
			b.emit(Change{UserID: u.ID, State: next, Previous: prev})
		}
		return
	}
	b.states[u.ID] = next
	if had && prev.LooksEqual(next) {
		// Only when the person state lapses moved (a PUBLISH refresh, or
		// a soft client sending the same document again): kept, but no
		// watcher is told what it already shows.
		return
	}
	ch := Change{UserID: u.ID, State: next, Urgent: ringsNewly(prev, next)}
	if had {
		ch.Previous = prev
	}
	b.emit(ch)
}

func (b *Bridge) emit(ch Change) {
	for _, l := range b.listeners {
		(*l)(ch)
	}
}

// ringsNewly reports whether next has an alerting call that prev lacked.
func ringsNewly(prev, next *State) bool {
	for i := range next.Calls {
		c := &next.Calls[i]
		if !c.Alerting() {
			continue
		}
		if prev == nil || !slices.ContainsFunc(prev.Calls, func(p Call) bool { return p.ID == c.ID && p.Alerting() }) {
			return true
		}
	}
	return prev != nil && next.Phone == PhoneRinging && prev.Phone != PhoneRinging
}

// named gives a call's remote party the name the directory has for it
// when the PBX gave none (FreeSWITCH names no callee, Asterisk only what
// the endpoint's caller id says): a colleague's extension reads as the
// colleague.
func (b *Bridge) named(tenant string, c Call) Call {
	if c.Remote.Name != "" || c.Remote.Number == "" {
		return c
	}
	if u, ok := b.dir.Lookup(Qualify(c.Remote.Number, tenant)); ok && u.Name != "" && slices.Contains(u.Extensions, c.Remote.Number) {
		c.Remote.Name = u.Name
	}
	return c
}

// compute builds a user's state from the sources and person states.
func (b *Bridge) compute(u *User) *State {
	st := &State{User: u, Devices: make([]DeviceStatus, 0, len(u.Devices))}
	var agg Aggregator
	for _, ref := range u.Devices {
		ds := DeviceUnknown
		if src, ok := b.sources[ref.Source]; ok {
			if d, ok := src.devices[ref.Device]; ok {
				ds = d.effective()
				for _, c := range d.calls {
					if c.IDsPending {
						st.IDsPending = true
					}
					if !c.Pending() {
						st.Calls = append(st.Calls, b.named(u.Tenant, *c))
					}
				}
			}
		}
		agg.Add(ds)
		st.Devices = append(st.Devices, DeviceStatus{DeviceRef: ref, State: ds})
	}
	st.Device = agg.State()
	if len(u.Devices) == 0 {
		st.Device = DeviceUnavailable
	}
	sortCalls(st.Calls)
	if m := b.persons[u.ID]; len(m) > 0 {
		st.Person = personOf(m)
	}
	st.Phone = phoneState(st.Device, st.Calls, &st.Person)
	return st
}
