package presence

import (
	"strings"
	"testing"
	"unsafe"
)

// TestInternerSharesAndForgets: equal strings come back as one copy, not
// a piece of what they were cut from; past its bound the interner forgets
// what it held and starts again.
func TestInternerSharesAndForgets(t *testing.T) {
	in := newInterner(64 + 6*internEntryBytes)
	msg := "SUBSCRIBE sip:100@pbx.test SIP/2.0"
	a := in.get(msg[10:26])
	b := in.get(strings.Clone(msg[10:26]))
	if a != "sip:100@pbx.test" || unsafe.StringData(a) != unsafe.StringData(b) {
		t.Fatalf("not one copy: %q %q", a, b)
	}
	if unsafe.StringData(a) == unsafe.StringData(msg[10:]) {
		t.Fatal("the kept copy is a piece of the message")
	}
	for i := range 10 {
		in.get(strings.Repeat("x", 10+i))
	}
	if in.bytes > 64+6*internEntryBytes || len(in.m) > 6 {
		t.Fatalf("past its bound: %d bytes, %d strings", in.bytes, len(in.m))
	}
	if c := in.get("sip:100@pbx.test"); unsafe.StringData(c) == unsafe.StringData(a) {
		t.Error("still held after the bound was passed")
	}
	if in.get("") != "" {
		t.Error("empty string")
	}
}

// TestInternerBytesAllocateOnlyOnce: a string built in a buffer comes
// back as the kept copy, without an allocation once it is kept.
func TestInternerBytesAllocateOnlyOnce(t *testing.T) {
	in := newInterner(internMaxBytes)
	buf := []byte("127.0.0.1:5060")
	first := in.getBytes(buf)
	if first != "127.0.0.1:5060" || unsafe.StringData(first) == unsafe.SliceData(buf) {
		t.Fatalf("not a copy of its own: %q", first)
	}
	buf[0] = '9' // the buffer is reused: the kept string must not change
	if first != "127.0.0.1:5060" {
		t.Fatalf("kept string changed with the buffer: %q", first)
	}
	buf[0] = '1'
	if allocs := testing.AllocsPerRun(100, func() { _ = in.getBytes(buf) }); allocs != 0 {
		t.Errorf("%v allocations for a kept string", allocs)
	}
	if got := in.get("127.0.0.1:5060"); unsafe.StringData(got) != unsafe.StringData(first) {
		t.Error("get and getBytes keep different copies")
	}
}
