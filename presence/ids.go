package presence

import (
	"crypto/rand"
	"encoding/base64"
	"strconv"
	"sync/atomic"
	"time"
)

// idSequence orders the subscription ids a server hands out: each takes
// the time in microseconds, or the last value plus one when that is not
// past it, so ids keep growing within a run and across restarts.
type idSequence struct{ last atomic.Uint64 }

func newIDSequence() *idSequence { return &idSequence{} }

// take returns the next value.
func (s *idSequence) take() uint64 {
	for {
		last := s.last.Load()
		next := max(last+1, uint64(time.Now().UnixMicro()))
		if s.last.CompareAndSwap(last, next) {
			return next
		}
	}
}

// dialogID makes a subscription's id (our To tag): twelve base-36 digits
// of the sequence, so that the state file stores subscriptions in the
// order they came (bbolt then appends to full pages instead of splitting
// half-full ones), and 96 bits from the kernel's CSPRNG, which is what
// makes the dialog's identifiers unguessable (they are the credential of
// a refresh).
func (s *idSequence) dialogID() string {
	var b [12 + 16]byte
	n := strconv.AppendUint(b[:0], s.take(), 36)
	pad := 12 - len(n)
	copy(b[pad:], n)
	for i := range pad {
		b[i] = '0'
	}
	var r [12]byte
	_, _ = rand.Read(r[:]) // never fails (crypto/rand)
	base64.RawURLEncoding.Encode(b[12:], r[:])
	return string(b[:])
}

// randomToken is 96 bits from the kernel's CSPRNG as 16 token characters
// (an ETag).
func randomToken() string {
	var r [12]byte
	_, _ = rand.Read(r[:])
	return base64.RawURLEncoding.EncodeToString(r[:])
}
