package presence

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Nonces (RFC 7616 §3.3, §5.4) are stateless to issue and bound to what
// they were issued for: a challenge costs two HMACs and no memory, and a
// nonce serves only the host and the dialog (Call-ID) that were
// challenged. A nonce is
//
//	issued (8 bytes, Unix seconds) || serial (8) || HMAC(key, issued, serial)[:8] ||
//	HMAC(key, issued, serial, IP, Call-ID)[:16]
//
// in hex. The serial makes every challenge's nonce a new one (a client
// starts its counts again at 1 with each). The first MAC says it is
// ours, the second what it is for: an
// Authorization of ours sent from another host or for another dialog
// (a replay, or a phone reusing the nonce of another key's dialog) gets a
// fresh challenge with stale=true. The nonce counts a client sends with
// one nonce must increase (nonceUses), which needs state: kept only for
// nonces that passed, bounded, oldest forgotten first.

// nonceBytes is a nonce's length before hex.
const nonceBytes = 8 + 8 + 8 + 16

// nonceMACs are the HMACs nonces are made with, reused with their
// buffers (each would be several allocations and a key schedule per
// challenge otherwise), and the serial of the next nonce.
type nonceMACs struct {
	key    [32]byte
	pool   sync.Pool // *nonceMAC
	serial atomic.Uint64
}

// nonceMAC is one HMAC and the bytes it reads and writes.
type nonceMAC struct {
	h        hash.Hash
	in, hash []byte
}

func (n *nonceMACs) get() *nonceMAC {
	if m, ok := n.pool.Get().(*nonceMAC); ok {
		return m
	}
	return &nonceMAC{h: hmac.New(sha256.New, n.key[:]), in: make([]byte, 0, 128), hash: make([]byte, 0, sha256.Size)}
}

// sum is the HMAC of m.in.
func (m *nonceMAC) sum() []byte {
	m.h.Reset()
	m.h.Write(m.in)
	m.hash = m.h.Sum(m.hash[:0])
	return m.hash
}

// make returns a new raw nonce issued at unix for a request from ip with
// callID.
func (n *nonceMACs) make(unix int64, ip []byte, callID string) [nonceBytes]byte {
	var raw [nonceBytes]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(unix))
	binary.BigEndian.PutUint64(raw[8:16], n.serial.Add(1))
	n.sign(&raw, ip, callID)
	return raw
}

// sign writes the two MACs of raw, whose issue time and serial are set.
func (n *nonceMACs) sign(raw *[nonceBytes]byte, ip []byte, callID string) {
	m := n.get()
	m.in = append(m.in[:0], raw[:16]...)
	copy(raw[16:24], m.sum())
	m.in = append(m.in, byte(len(ip)))
	m.in = append(m.in, ip...)
	m.in = append(m.in, callID...)
	copy(raw[24:], m.sum())
	if cap(m.in) <= 4096 { // a huge Call-ID's buffer is not kept
		n.pool.Put(m)
	}
}

// nonceCheck is what a nonce says of a request.
type nonceCheck struct {
	ours  bool // issued by this process
	bound bool // for this request's host and Call-ID
	fresh bool // within its lifetime
	raw   [nonceBytes]byte
}

// check reads nonce as one of ours for a request from ip with callID.
func (n *nonceMACs) check(nonce string, ip []byte, callID string, now time.Time, ttl time.Duration) nonceCheck {
	var c nonceCheck
	if len(nonce) != 2*nonceBytes {
		return c
	}
	if _, err := hex.Decode(c.raw[:], []byte(nonce)); err != nil {
		return c
	}
	want := c.raw
	n.sign(&want, ip, callID)
	c.ours = hmac.Equal(want[16:24], c.raw[16:24])
	c.bound = c.ours && hmac.Equal(want[24:], c.raw[24:])
	c.fresh = now.Sub(time.Unix(int64(binary.BigEndian.Uint64(c.raw[:8])), 0)) <= ttl
	return c
}

// requestIP appends the bytes of a request's source address that a
// nonce is bound to (16 for IPv6, 4 for IPv4, none when unknown) to dst.
func requestIP(dst []byte, req *sipmsg.Request) []byte {
	ap := req.Peer
	if !ap.IsValid() {
		ap = parseAddrPort(req.Source)
	}
	if !ap.IsValid() {
		return dst
	}
	a := ap.Addr().Unmap()
	if a.Is4() {
		b := a.As4()
		return append(dst, b[:]...)
	}
	b := a.As16()
	return append(dst, b[:]...)
}

// nonceUses keeps, for each nonce a request passed with, the highest
// nonce count used with it, so that a count used before (a replay) is
// refused. It holds at most max nonces; past that the oldest is
// forgotten, and a later request with it is asked to take a fresh one
// (stale): a bound an authenticated flood cannot push memory past.
type nonceUses struct {
	mu    sync.Mutex // guards the rest; a leaf
	count map[[nonceBytes]byte]uint32
	order [][nonceBytes]byte // a ring, oldest at next
	next  int
	max   int
}

func newNonceUses(max int) *nonceUses {
	return &nonceUses{count: make(map[[nonceBytes]byte]uint32), max: max}
}

// use records count nc for nonce raw and reports whether it is new:
// greater than every count used with the nonce before (a nonce without
// counts, nc 0, may serve once). A nonce not remembered is taken only
// with its first count (1, or none); one forgotten since (more than max
// others were used after it) is refused, and its client takes a fresh
// one.
func (u *nonceUses) use(raw [nonceBytes]byte, nc uint32) (ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	last, seen := u.count[raw]
	switch {
	case seen:
		if nc <= last {
			return false
		}
		u.count[raw] = nc
		return true
	case nc > 1:
		return false // forgotten: its counts cannot be checked any more
	}
	if len(u.order) < u.max {
		u.order = append(u.order, raw)
	} else {
		delete(u.count, u.order[u.next])
		u.order[u.next] = raw
		u.next = (u.next + 1) % u.max
	}
	u.count[raw] = nc
	return true
}

// len is how many nonces are remembered.
func (u *nonceUses) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.count)
}
