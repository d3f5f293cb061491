package udptx

import (
	"strconv"
	"testing"
	"time"
)

// TestExpiredTransactionsAreLetGo: once expired, no transaction is still
// referenced from the table's queue, also after the queue is compacted
// (its backing array kept copies of moved entries, holding hundreds of
// thousands of responses after a mass set-up).
func TestExpiredTransactionsAreLetGo(t *testing.T) {
	tbl := NewTable()
	start := time.Now()
	for i := range 3000 {
		key := strconv.Itoa(i)
		tbl.open(key, func() *Tx { return &Tx{key: key, created: start.Add(time.Duration(i) * time.Millisecond)} })
	}
	tbl.Expire(start.Add(2000 * time.Millisecond)) // the first 2000: compacted
	if n := tbl.Size(); n != 1000 {
		t.Fatalf("%d kept, want 1000", n)
	}
	for i, tx := range tbl.queue[:cap(tbl.queue)] {
		if i >= len(tbl.queue) && tx != nil {
			t.Fatalf("slot %d past the queue still holds %s", i, tx.key)
		}
	}
	tbl.Expire(start.Add(time.Hour))
	if n := tbl.Size(); n != 0 {
		t.Fatalf("%d kept after all expired", n)
	}
	for _, tx := range tbl.queue[:cap(tbl.queue)] {
		if tx != nil {
			t.Fatalf("an expired transaction (%s) is still referenced", tx.key)
		}
	}
}
