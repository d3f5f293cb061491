package presence

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// recordingTx is a server transaction that keeps the status codes
// answered.
type recordingTx struct{ codes []int }

func (r *recordingTx) done() {}

func (r *recordingTx) respond(_ []byte, code int) error {
	r.codes = append(r.codes, code)
	return nil
}

const fuzzSubscribe = "SUBSCRIBE sip:100@127.0.0.1:5060 SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5301;branch=z9hG4bKabc;rport\r\n" +
	"From: <sip:watcher@127.0.0.1>;tag=abc\r\nTo: <sip:100@127.0.0.1:5060>\r\n" +
	"Call-ID: fuzz@test\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:watcher@127.0.0.1:5301>\r\n" +
	"Event: presence\r\nExpires: 600\r\nAccept: application/pidf+xml\r\nMax-Forwards: 70\r\n" +
	"Content-Length: 0\r\n\r\n"

// FuzzSubscribe feeds whatever sipmsg accepts to the SUBSCRIBE
// handler: it must answer exactly once with a sensible status and never
// panic, and every subscription it keeps must be well formed.
func FuzzSubscribe(f *testing.F) {
	f.Add([]byte(fuzzSubscribe))
	f.Add([]byte(strings.Replace(fuzzSubscribe, "Expires: 600", "Expires: 0", 1)))
	f.Add([]byte(strings.Replace(fuzzSubscribe, "To: <sip:100@127.0.0.1:5060>", "To: <sip:100@127.0.0.1:5060>;tag=zzz", 1)))
	f.Add([]byte(strings.Replace(fuzzSubscribe, "Event: presence", "Event: dialog;id=7", 1)))
	f.Add([]byte(strings.Replace(fuzzSubscribe, "Accept: application/pidf+xml", "Accept: ,,;;*/*", 1)))
	env := newEnv(f, trusted)
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := sipmsg.Parse(data)
		if err != nil || req.Method != "SUBSCRIBE" {
			return
		}
		req.Peer = netip.MustParseAddrPort("127.0.0.1:5301")
		req.Source, req.Transport = req.Peer.String(), "UDP"
		tx := &recordingTx{}
		handler, _ := env.srv.handlerFor(req.Method)
		handler(req, tx)
		if len(tx.codes) != 1 {
			t.Fatalf("%d responses to:\n%s", len(tx.codes), data)
		}
		switch code := tx.codes[0]; code {
		case 200, 400, 401, 404, 406, 413, 423, 481, 489, 500, 503:
		default:
			t.Fatalf("status %d to:\n%s", code, data)
		}
		for _, s := range env.srv.subs.all() {
			if s.ID == "" || s.UserID == "" || s.CallID == "" || s.RemoteTag == "" {
				t.Fatalf("malformed subscription kept: %+v", s)
			}
			env.srv.terminate(s, "deactivated")
		}
	})
}

// FuzzDatagram feeds datagrams to what reads the UDP listeners, which
// answers some requests from the raw bytes and queues the rest for the
// workers, and to what the workers run: nothing may panic, and no request
// Lamplighter serves is left to sipgo.
func FuzzDatagram(f *testing.F) {
	f.Add([]byte(fuzzSubscribe))
	f.Add([]byte(strings.Replace(fuzzSubscribe, "Content-Length: 0", "Content-Length: x", 1)))
	f.Add([]byte(strings.Replace(fuzzSubscribe, "SUBSCRIBE sip:", "PUBLISH sip:", 1)))
	f.Add([]byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.LL.0\r\nCSeq: 1 NOTIFY\r\n\r\n"))
	f.Add([]byte("OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP h;branch=1\r\ni: c\r\nCSeq: 1 OPTIONS\r\nt: <sip:x>\r\nf: <sip:y>;tag=1\r\nl: 0\r\n\r\n"))
	env := newEnv(f)
	conn := env.srv.udpConns[0]
	remote := netip.MustParseAddrPort("127.0.0.1:9") // discard: nobody answers
	f.Fuzz(func(t *testing.T, data []byte) {
		if env.srv.onDatagram(conn, remote, data) && isRawRequest(data) && env.srv.serves(rawMethod(data)) {
			t.Fatalf("a request Lamplighter serves went to sipgo")
		}
		if isRawRequest(data) && env.srv.serves(rawMethod(data)) {
			// What the workers would do, here, where a panic is seen.
			env.srv.serveDatagram(conn, remote, bytes.Clone(data))
		}
	})
}
