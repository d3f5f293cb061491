package presence

import (
	"strings"
	"sync"
)

// interner keeps one copy of the strings many subscriptions share (one
// phone's thirty BLF keys: its source, contact, URI and user agent; the
// watchers of one person: its URI), copied out of the request they came
// in (a substring would keep the whole message alive). It is bounded:
// past maxBytes of strings it forgets them all and starts again (the
// subscriptions keep theirs), so that strings nobody uses any more (a
// phone gone, a peer sending new ones) cannot pile up. Cheaper than
// unique.Make, whose entries die with their handles at the next
// collection (the strings do not keep a handle), so that every cycle
// made and registered them again.
type interner struct {
	mu       sync.Mutex // guards m and bytes; a leaf (taken under Subscription.mu)
	m        map[string]string
	bytes    int
	maxBytes int
}

// internMaxBytes bounds what an interner holds, its map's entries
// counted (internEntryBytes each): enough for the distinct strings of
// some hundred thousand subscriptions.
const (
	internMaxBytes   = 16 << 20
	internEntryBytes = 48
)

func newInterner(maxBytes int) *interner {
	return &interner{m: map[string]string{}, maxBytes: maxBytes}
}

// get returns the kept copy of s, keeping one first if there is none.
func (in *interner) get(s string) string {
	if s == "" {
		return ""
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[s]; ok {
		return v
	}
	return in.keep(s)
}

// getBytes is get for a string still being built: when it is kept
// already (the usual case) nothing is allocated.
func (in *interner) getBytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[string(b)]; ok {
		return v
	}
	return in.keep(string(b))
}

// keep adds a copy of s, starting afresh when full. Called with mu held.
func (in *interner) keep(s string) string {
	if in.bytes+len(s)+internEntryBytes > in.maxBytes {
		in.m = map[string]string{} // a new map: clear would keep the old one's size
		in.bytes = 0
	}
	v := strings.Clone(s)
	in.m[v] = v
	in.bytes += len(v) + internEntryBytes
	return v
}
