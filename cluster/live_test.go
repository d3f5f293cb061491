package cluster

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lamplighter/lamplighter/bridge"
)

// entry is a persons bucket entry as the watch delivers one.
type entry struct {
	key string
	rev uint64
	v   personValue
}

func (e entry) Bucket() string { return "lamplighter_persons" }
func (e entry) Key() string    { return e.key }
func (e entry) Value() []byte {
	b, _ := json.Marshal(e.v)
	return b
}
func (e entry) Revision() uint64                { return e.rev }
func (e entry) Created() time.Time              { return time.Time{} }
func (e entry) Delta() uint64                   { return 0 }
func (e entry) Operation() jetstream.KeyValueOp { return jetstream.KeyValuePut }

// TestHintsNeverOutrankTheBucket: a live hint shows at once; one older
// than what the bucket showed from its node is dropped, and so is a
// repeat; a hint shown is replaced by the bucket's newest entry for its
// key as soon as the bucket delivers anything for that key, even an
// entry older than what it showed (the hint's own write, which lost to
// another node's in the bucket).
func TestHintsNeverOutrankTheBucket(t *testing.T) {
	dir, err := bridge.NewDirectory([]bridge.User{{ID: "debbie", Extensions: []string{"100"}}})
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(dir)
	n := New(Config{Node: "a"}, b, nil)
	shows := func() string {
		st, _ := b.State("debbie")
		return st.Person.Note
	}
	value := func(node string, seq uint64, note string) personValue {
		return personValue{Node: node, User: "debbie", Origin: "api", Seq: seq, Person: &bridge.PersonState{Note: note}}
	}
	hint := func(v personValue) {
		data, _ := json.Marshal(v)
		n.onHint(&nats.Msg{Data: data})
	}
	key := personKey("debbie", "api")

	n.apply(entry{key, 5, value("c", 3, "c's third")})
	if shows() != "c's third" {
		t.Fatalf("the bucket's entry: %q", shows())
	}
	hint(value("c", 2, "c's second")) // older than the bucket showed
	if shows() != "c's third" {
		t.Errorf("an old hint showed: %q", shows())
	}
	hint(value("b", 1, "b's first"))
	if shows() != "b's first" {
		t.Errorf("a new hint did not show: %q", shows())
	}
	// b's write reaches the bucket before c's (revision 4 < 5): the
	// bucket's word is c's, and shows again.
	n.apply(entry{key, 4, value("b", 1, "b's first")})
	if shows() != "c's third" {
		t.Errorf("after the hint's own entry, older than the bucket's newest: %q", shows())
	}
	hint(value("b", 1, "b's first")) // a repeat of it
	if shows() != "c's third" {
		t.Errorf("a repeated hint showed again: %q", shows())
	}
	// A newer write of b: hinted, then the bucket confirms it.
	hint(value("b", 2, "b's second"))
	n.apply(entry{key, 6, value("b", 2, "b's second")})
	if shows() != "b's second" {
		t.Errorf("b's second write: %q", shows())
	}
	if got := n.stats.Hinted.Load(); got != 2 {
		t.Errorf("%d hints shown, want 2", got)
	}
}

// TestHintsYieldToOurOwnNewerWrite: two nodes write one key at once and
// ours lands last in the bucket. The other node's write, hinted after
// ours was answered, shows only until its entry (older than ours)
// arrives, and then ours shows again; a repeat of that hint after its
// entry is dropped. (Before, with our own write not counted as the
// bucket's newest, the other node's value stayed here for good.)
func TestHintsYieldToOurOwnNewerWrite(t *testing.T) {
	dir, err := bridge.NewDirectory([]bridge.User{{ID: "bob", Extensions: []string{"101"}}})
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(dir)
	n := New(Config{Node: "b"}, b, nil)
	shows := func() string {
		st, _ := b.State("bob")
		return st.Person.Note
	}
	hint := func(v personValue) {
		data, _ := json.Marshal(v)
		n.onHint(&nats.Msg{Data: data})
	}
	key := personKey("bob", "api")
	theirs := personValue{Node: "a", User: "bob", Origin: "api", Seq: 9, Person: &bridge.PersonState{Note: "a9"}}

	write := func(note string) *personValue {
		p := bridge.PersonState{Note: note}
		if err := b.SetPerson("bob", "api", p); err != nil {
			t.Fatal(err)
		}
		n.share("bob", "api", &p)
		n.mu.Lock()
		v := n.queue[key]
		n.mu.Unlock()
		return v
	}

	// Their hint comes after our write was answered, their entry after.
	ours := write("b9")
	n.wrote(key, ours, 12)
	hint(theirs)
	if shows() != "a9" {
		t.Fatalf("a newer-looking hint did not show: %q", shows())
	}
	n.apply(entry{key, 11, theirs})
	if shows() != "b9" {
		t.Errorf("after their entry (revision 11 < our 12): %q, want b9", shows())
	}

	// Their entry comes while ours is under way, their hint repeated
	// after ours was answered.
	theirs.Seq, theirs.Person = 10, &bridge.PersonState{Note: "a10"}
	ours = write("b10")
	n.apply(entry{key, 13, theirs})
	n.wrote(key, ours, 14)
	hint(theirs)
	if shows() != "b10" {
		t.Errorf("a hint of a write the bucket already delivered showed: %q, want b10", shows())
	}
}
