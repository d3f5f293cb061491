package sipmsg

import (
	"net/netip"
	"testing"
)

// BenchmarkParse reads a SUBSCRIBE as a desk phone sends it.
func BenchmarkParse(b *testing.B) {
	msg := []byte(subscribe)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := Parse(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResponse writes the 200 to that SUBSCRIBE.
func BenchmarkResponse(b *testing.B) {
	r, err := ParseString(subscribe)
	if err != nil {
		b.Fatal(err)
	}
	r.Peer = netip.MustParseAddrPort("192.0.2.9:40000")
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendResponse(buf[:0], r, 200, "OK", "tag1")
		buf = AppendHeader(buf, "Expires", "600")
		buf = AppendBody(buf, "", nil)
	}
}
