package sipmsg

import (
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// FuzzParse: no input makes Parse panic, and for every request that both
// Parse and another SIP stack (sipgo's) take, the response Parse's
// request gives is one that stack reads, with the request's Call-ID and
// CSeq.
func FuzzParse(f *testing.F) {
	f.Add([]byte(subscribe))
	f.Add([]byte("OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;rport;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSeq: 1 OPTIONS\r\n\r\n"))
	parser := sip.NewParser()
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		if m, err := parser.ParseSIP(data); err != nil {
			return
		} else if q, ok := m.(*sip.Request); !ok || q.From() == nil || q.To() == nil || q.Via() == nil ||
			q.CallID() == nil || q.CSeq() == nil {
			// sipgo reads headers lazily: this is what it takes in full.
			// (Without Call-ID or CSeq it read another request than
			// Parse: it keeps lines that end in a bare LF inside the
			// header before them, where Parse ends each line there.)
			return
		}
		r.Peer = netip.MustParseAddrPort("192.0.2.1:5060")
		b := AppendBody(AppendResponse(nil, r, 200, "OK", "t1"), "", nil)
		msg, err := parser.ParseSIP(b)
		if err != nil {
			t.Fatalf("our response does not parse: %v\n%s", err, b)
		}
		res, ok := msg.(*sip.Response)
		if !ok || res.CallID() == nil || res.CallID().Value() != r.CallID || res.CSeq() == nil || res.CSeq().SeqNo != r.CSeq {
			t.Fatalf("response lost the request's Call-ID or CSeq:\n%s", b)
		}
	})
}
