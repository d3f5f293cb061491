package presence

import (
	"context"
	"sync"
	"time"
)

// expiryWheel ends subscriptions when they lapse. Each subscription sits
// in the slot of the second its expiry falls in, and the slots are swept
// once a second, instead of a timer each (a timer cost about 100 bytes
// and a place in the runtime's timer heap per subscription). A refresh
// moves nothing: when its old slot comes up, a subscription whose expiry
// has moved on goes to the slot of the new one. So a subscription ends
// within a second after it lapses, and is in one slot at a time.
type expiryWheel struct {
	mu    sync.Mutex                // guards slots and next; a leaf
	slots map[int64][]*Subscription // by Unix second
	next  int64                     // the first second not yet swept
}

func newExpiryWheel() *expiryWheel { return &expiryWheel{slots: map[int64][]*Subscription{}} }

// add puts sub in the slot of at.
func (w *expiryWheel) add(sub *Subscription, at time.Time) {
	sec := at.Unix()
	w.mu.Lock()
	if sec < w.next {
		sec = w.next // already swept: the next sweep takes it
	}
	w.slots[sec] = append(w.slots[sec], sub)
	w.mu.Unlock()
}

// due takes the subscriptions of every slot up to now.
func (w *expiryWheel) due(now time.Time) []*Subscription {
	end := now.Unix()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next == 0 {
		w.next = end
		for sec := range w.slots { // added before the first sweep
			w.next = min(w.next, sec)
		}
	}
	var out []*Subscription
	for ; w.next <= end; w.next++ {
		out = append(out, w.slots[w.next]...)
		delete(w.slots, w.next)
	}
	return out
}

// size is the number of entries in the wheel.
func (w *expiryWheel) size() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, slot := range w.slots {
		n += len(slot)
	}
	return n
}

// everySecond calls f with the time once a second until ctx ends: the
// server's sweeps (lapsed subscriptions and publications, finished UDP
// transactions) run on it.
func everySecond(ctx context.Context, f func(now time.Time)) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			f(now)
		}
	}
}

// expireDue ends what lapsed by now and puts back what was refreshed.
func (s *Server) expireDue(now time.Time) {
	for _, sub := range s.expiry.due(now) {
		sub.mu.Lock()
		removed, expires := sub.removed, sub.expires
		sub.mu.Unlock()
		switch {
		case removed:
		case expires.After(now):
			s.expiry.add(sub, expires) // refreshed since
		default:
			s.terminate(sub, "timeout")
		}
	}
}
