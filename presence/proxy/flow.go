package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A flow is how a phone reached Lamplighter: a transport and the address
// its packets came from (for TCP and TLS, the connection's remote end).
// Requests for the phone go back the same way, through its NAT.
type flow struct {
	transport string // UDP, TCP or TLS
	addr      netip.AddrPort
}

func (f flow) valid() bool { return f.addr.IsValid() }

func (f flow) String() string { return strings.ToLower(f.transport) + ":" + f.addr.String() }

// The URIs the proxy puts in Path and Record-Route carry a token as their
// user part: the phone's flow and the PBX it was sent to, under an HMAC
// with a key (Options.TokenKey: kept in the state directory, so that the
// Paths a PBX holds and the Record-Routes of calls in progress still
// route after Lamplighter restarts). A Route that comes back with a token
// is ours (whatever address the PBX reached us on) and says where to go;
// a forged or damaged token is not ours and routes nowhere.
//
// A cluster shares one key among its nodes (cluster.Node.ShareKey): when
// a node takes the cluster's key in place of its own (setKey), tokens
// under the key it had are still read, so that what it minted a moment
// before still routes.
type tokens struct {
	cur, prev atomic.Pointer[[32]byte]
}

// newTokens uses key, or a random one when key is not 32 bytes.
func newTokens(key []byte) *tokens {
	t := &tokens{}
	var k [32]byte
	if len(key) == len(k) {
		copy(k[:], key)
	} else if _, err := rand.Read(k[:]); err != nil {
		panic("proxy: no randomness: " + err.Error())
	}
	t.cur.Store(&k)
	return t
}

// key is the key tokens are minted under.
func (t *tokens) key() *[32]byte { return t.cur.Load() }

// setKey mints under key from now on, and still reads tokens under the
// key it replaces; it reports whether the key changed.
func (t *tokens) setKey(key []byte) bool {
	if len(key) != 32 {
		return false
	}
	old := t.cur.Load()
	if bytes.Equal(old[:], key) {
		return false
	}
	k := [32]byte(key)
	t.prev.Store(old)
	t.cur.Store(&k)
	return true
}

// tokenPrefix starts every token, so that an ordinary user part is never
// taken for one.
const tokenPrefix = "ll-"

// transport codes in a token.
var transportCode = map[string]byte{"UDP": 'u', "TCP": 't', "TLS": 's'}

// mint returns the token of a flow towards the PBX target (its index).
func (t *tokens) mint(f flow, target int) string {
	b := make([]byte, 0, 2+18+2+12)
	b = append(b, transportCode[f.transport], byte(target))
	a16 := f.addr.Addr().As16()
	b = append(b, a16[:]...)
	b = append(b, byte(f.addr.Port()>>8), byte(f.addr.Port()))
	b = append(b, mac(t.key(), b)...)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// read returns the flow and target of a token, ok false when it is not
// one of ours.
func (t *tokens) read(s string) (f flow, target int, ok bool) {
	rest, found := strings.CutPrefix(s, tokenPrefix)
	if !found {
		return flow{}, 0, false
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil || len(b) != 2+16+2+12 {
		return flow{}, 0, false
	}
	body, sum := b[:20], b[20:]
	if !hmac.Equal(sum, mac(t.key(), body)) {
		prev := t.prev.Load()
		if prev == nil || !hmac.Equal(sum, mac(prev, body)) {
			return flow{}, 0, false
		}
	}
	for name, code := range transportCode {
		if code == body[0] {
			f.transport = name
		}
	}
	if f.transport == "" {
		return flow{}, 0, false
	}
	ip := netip.AddrFrom16([16]byte(body[2:18])).Unmap()
	f.addr = netip.AddrPortFrom(ip, uint16(body[18])<<8|uint16(body[19]))
	return f, int(body[1]), true
}

// mac is a token's HMAC under key.
func mac(key *[32]byte, b []byte) []byte {
	m := hmac.New(sha256.New, key[:])
	m.Write(b)
	return m.Sum(nil)[:12]
}

// A binding is a phone's registration that the PBX accepted through
// Lamplighter: its address-of-record's user, the flow it came on, the
// contacts it registered and the PBX, until it expires.
type binding struct {
	user     string // the user part of the address-of-record
	domain   string // and its domain (lower case): a tenant's, where there are tenants
	flow     flow
	target   int
	contacts []string // the Contact URIs registered on this flow
	expires  time.Time
}

// bindings remembers the registrations accepted through the proxy, by
// flow and by contact URI, bounded in total; expired ones are swept.
type bindings struct {
	mu        sync.Mutex
	byFlow    map[flow]*binding
	byContact map[string]*binding
	byUser    map[userKey]*binding // by a contact's user part, for a PBX that forgot the Path (contactUser)
	perUser   map[userKey]int      // live bindings of a user on a target
	max       int
	now       func() time.Time
	dirty     bool // changed since the last snapshot
}

func newBindings(max int) *bindings {
	return &bindings{byFlow: map[flow]*binding{}, byContact: map[string]*binding{}, byUser: map[userKey]*binding{},
		perUser: map[userKey]int{},
		max:     max, now: time.Now}
}

// userKey names a user on a target.
type userKey struct {
	target int
	user   string
}

// put records (or, for a zero expiry, removes) the binding of a flow. A
// new flow past the bound is not remembered (reported false): its phone
// still registers with the PBX, and only needs a password for presence.
func (bs *bindings) put(b binding) bool {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.dirty = true
	if old := bs.byFlow[b.flow]; old != nil {
		bs.dropLocked(old)
	}
	if !b.expires.After(bs.now()) {
		return true
	}
	if len(bs.byFlow) >= bs.max {
		return false
	}
	nb := b
	bs.byFlow[b.flow] = &nb
	bs.perUser[userKey{b.target, b.user}]++
	for _, c := range b.contacts {
		bs.byContact[c] = &nb
		bs.byUser[userKey{b.target, contactUser(c)}] = &nb
	}
	return true
}

// contactUser is the user part of a contact key (uriKey's user@host:port).
func contactUser(key string) string {
	user, _, _ := strings.Cut(key, "@")
	return user
}

func (bs *bindings) dropLocked(b *binding) {
	if bs.byFlow[b.flow] == b {
		delete(bs.byFlow, b.flow)
		k := userKey{b.target, b.user}
		if bs.perUser[k]--; bs.perUser[k] <= 0 {
			delete(bs.perUser, k)
		}
	}
	for _, c := range b.contacts {
		if bs.byContact[c] == b {
			delete(bs.byContact, c)
		}
		if k := (userKey{b.target, contactUser(c)}); bs.byUser[k] == b {
			delete(bs.byUser, k)
		}
	}
}

// forContactUser returns the live binding on a target whose contact has
// the user part user.
func (bs *bindings) forContactUser(target int, user string) (binding, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b := bs.byUser[userKey{target, strings.ToLower(user)}]
	if b == nil || !b.expires.After(bs.now()) {
		return binding{}, false
	}
	return *b, true
}

// onFlow returns the live binding of a flow.
func (bs *bindings) onFlow(f flow) (binding, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b := bs.byFlow[f]
	if b == nil || !b.expires.After(bs.now()) {
		return binding{}, false
	}
	return *b, true
}

// forContact returns the live binding that registered a contact URI.
func (bs *bindings) forContact(uri string) (binding, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b := bs.byContact[uri]
	if b == nil || !b.expires.After(bs.now()) {
		return binding{}, false
	}
	return *b, true
}

// expire forgets the bindings expired by now and returns them.
func (bs *bindings) expire(now time.Time) []binding {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	var gone []binding
	for _, b := range bs.byFlow {
		if !b.expires.After(now) {
			bs.dropLocked(b)
			gone = append(gone, *b)
		}
	}
	if len(gone) > 0 {
		bs.dirty = true
	}
	return gone
}

// snapshot returns the live bindings and whether they changed since the
// last snapshot.
func (bs *bindings) snapshot() ([]binding, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if !bs.dirty {
		return nil, false
	}
	bs.dirty = false
	now := bs.now()
	out := make([]binding, 0, len(bs.byFlow))
	for _, b := range bs.byFlow {
		if b.expires.After(now) {
			out = append(out, *b)
		}
	}
	return out, true
}

// live returns the live bindings (and their number).
func (bs *bindings) live() ([]binding, int) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	now := bs.now()
	out := make([]binding, 0, len(bs.byFlow))
	for _, b := range bs.byFlow {
		if b.expires.After(now) {
			out = append(out, *b)
		}
	}
	return out, len(out)
}

// markDirty says the bindings must be written again.
func (bs *bindings) markDirty() {
	bs.mu.Lock()
	bs.dirty = true
	bs.mu.Unlock()
}

// count returns how many live bindings a user holds on a target.
func (bs *bindings) count(target int, user string) int {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return bs.perUser[userKey{target, user}]
}

// users returns the users with live bindings on a target.
func (bs *bindings) users(target int) []string {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	var out []string
	for k := range bs.perUser {
		if k.target == target {
			out = append(out, k.user)
		}
	}
	return out
}

// len returns how many bindings are held.
func (bs *bindings) len() int {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return len(bs.byFlow)
}
