package presence

import (
	"strings"
	"testing"
	"time"
)

// TestDialogIDsGrowAndDiffer: ids sort in the order they were made (so the
// state file appends them), across a restart too, and their random parts
// differ.
func TestDialogIDsGrowAndDiffer(t *testing.T) {
	s := newIDSequence()
	prev := ""
	seen := map[string]bool{}
	for range 10000 {
		id := s.dialogID()
		if len(id) != 28 || strings.ContainsAny(id, "+/=;, ") {
			t.Fatalf("id %q: 28 token characters expected", id)
		}
		if id <= prev {
			t.Fatalf("%q after %q: ids must grow", id, prev)
		}
		if seen[id[12:]] {
			t.Fatalf("random part %q repeated", id[12:])
		}
		seen[id[12:]] = true
		prev = id
	}
	// Faster than one a microsecond, ids ran ahead of the clock by at
	// most their number: a restart takes longer than that.
	time.Sleep(10000*time.Microsecond + 10*time.Millisecond)
	if later := newIDSequence().dialogID(); later <= prev {
		t.Errorf("a restarted server's id %q sorts before %q", later, prev)
	}
}
