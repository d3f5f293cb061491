package adapters

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Queue is an unbounded FIFO between a connection's reader and the code
// that maps what it read, so that the reader never blocks and nothing is
// dropped. Wake has a value whenever items may be waiting.
type Queue[T any] struct {
	mu    sync.Mutex
	items []T
	wake  chan struct{}
}

// NewQueue returns an empty queue.
func NewQueue[T any]() *Queue[T] { return &Queue[T]{wake: make(chan struct{}, 1)} }

// Push adds an item; it never blocks.
func (q *Queue[T]) Push(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Pop takes the oldest item, if any.
func (q *Queue[T]) Pop() (T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var zero T
	if len(q.items) == 0 {
		return zero, false
	}
	v := q.items[0]
	q.items[0] = zero
	q.items = q.items[1:]
	return v, true
}

// Wake is signalled after a Push.
func (q *Queue[T]) Wake() <-chan struct{} { return q.wake }

// Backoff bounds the waits between connection attempts.
type Backoff struct {
	Min, Max time.Duration
}

// Reconnect runs session until ctx ends, waiting between attempts with
// capped exponential backoff and jitter (the wait starts again from Min
// after a session that lasted a good while). failed is told each error,
// the wait that follows and returns nothing; it records status and logs.
func (b Backoff) Reconnect(ctx context.Context, log *slog.Logger, session func(context.Context) error, failed func(err error, wait time.Duration)) {
	wait := b.Min
	for {
		started := time.Now()
		err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > 2*b.Max {
			wait = b.Min
		}
		jittered := wait/2 + rand.N(wait/2+1)
		failed(err, jittered)
		select {
		case <-ctx.Done():
			return
		case <-time.After(jittered):
		}
		wait = min(2*wait, b.Max)
	}
}
