package presence

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// recordingTx is a server transaction that keeps what was answered.
type recordingTx struct {
	responses []*sip.Response
	done      chan struct{}
}

func newRecordingTx() *recordingTx { return &recordingTx{done: make(chan struct{})} }

func (r *recordingTx) Respond(res *sip.Response) error {
	r.responses = append(r.responses, res)
	return nil
}
func (r *recordingTx) Acks() <-chan *sip.Request          { return nil }
func (r *recordingTx) OnCancel(sip.FnTxCancel) bool       { return false }
func (r *recordingTx) Terminate()                         {}
func (r *recordingTx) OnTerminate(sip.FnTxTerminate) bool { return false }
func (r *recordingTx) Done() <-chan struct{}              { return r.done }
func (r *recordingTx) Err() error                         { return nil }

const fuzzSubscribe = "SUBSCRIBE sip:100@127.0.0.1:5060 SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5301;branch=z9hG4bKabc;rport\r\n" +
	"From: <sip:watcher@127.0.0.1>;tag=abc\r\nTo: <sip:100@127.0.0.1:5060>\r\n" +
	"Call-ID: fuzz@test\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:watcher@127.0.0.1:5301>\r\n" +
	"Event: presence\r\nExpires: 600\r\nAccept: application/pidf+xml\r\nMax-Forwards: 70\r\n" +
	"Content-Length: 0\r\n\r\n"

// FuzzSubscribe feeds whatever sipgo's parser accepts to the SUBSCRIBE
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
		msg, err := sip.NewParser().ParseSIP(data)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok || req.Method != sip.SUBSCRIBE {
			return
		}
		req.SetSource("127.0.0.1:5301")
		req.SetTransport("UDP")
		tx := newRecordingTx()
		env.srv.handleSubscribe(req, tx)
		if len(tx.responses) != 1 {
			t.Fatalf("%d responses to:\n%s", len(tx.responses), data)
		}
		switch code := tx.responses[0].StatusCode; code {
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
