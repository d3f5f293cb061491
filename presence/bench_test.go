package presence

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// benchSubscription is a dialog subscription to debbie from a watcher at
// source, as newSubscription would make it.
func benchSubscription(id, source string) *Subscription {
	target, _ := sipmsg.ParseURI("sip:watcher@" + source)
	sub := &Subscription{ID: id, CallID: id + "@w", RemoteTag: "rt", UserID: "debbie", Entity: "sip:100@pbx.example.com",
		Package: PackageDialog, pkg: dialogPackage{}, MediaType: body.TypeDialogInfo,
		LocalURI: "sip:100@pbx.example.com", RemoteURI: "sip:200@pbx.example.com", Transport: "UDP", Source: source,
		LocalHost: "127.0.0.1", LocalPort: 5060, expires: time.Now().Add(time.Hour)}
	sub.setTarget(newInterner(internMaxBytes), target)
	return sub
}

// BenchmarkBuildNotify renders the in-dialog NOTIFY of a dialog
// subscription (headers and dialog-info body) as it goes on the wire.
func BenchmarkBuildNotify(b *testing.B) {
	env := newEnv(b, trusted)
	sub := benchSubscription("t0", "127.0.0.1:5099")
	env.bridge.Apply(answered("200"))
	st, _ := env.bridge.State("debbie")
	b.ReportAllocs()
	buf := make([]byte, 0, 2048)
	for b.Loop() {
		sub.mu.Lock()
		sub.cseq++
		buf = env.srv.appendNotify(buf[:0], sub, sub.hop(), st, sub.cseq, "", 3600, "z9hG4bK.bench", false)
		sub.mu.Unlock()
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkSendNotify sends NOTIFYs to 1,000 subscriptions of one user
// over real UDP sockets to a watcher that answers each with 200, and
// waits for every answer: building, sending, the transaction and its
// response. One op is one NOTIFY transaction.
func BenchmarkSendNotify(b *testing.B) {
	metrics := newTestMetrics()
	env := newEnv(b, trusted, func(o *Options) { o.Metrics = metrics })
	watcher := newBenchWatcher(b)
	const watchers = 1000
	subs := make([]*Subscription, watchers)
	for i := range subs {
		subs[i] = benchSubscription(fmt.Sprintf("b%d", i), watcher.LocalAddr().String())
		env.srv.subs.add(subs[i], watchers)
	}
	b.ReportAllocs()
	sent := int64(0)
	start := time.Now()
	for b.Loop() {
		env.srv.enqueue(subs[sent%watchers], time.Now(), true)
		sent++
		if sent%watchers == 0 { // a round: wait for every answer
			waitAnswers(b, metrics, sent)
		}
	}
	waitAnswers(b, metrics, sent)
	b.ReportMetric(float64(sent)/time.Since(start).Seconds(), "notifies/s")
}

func waitAnswers(b *testing.B, m *testMetrics, n int64) {
	deadline := time.Now().Add(10 * time.Second)
	for m.sent.Load() < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d NOTIFYs answered after 10s", m.sent.Load(), n)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// newBenchWatcher is a UDP socket on loopback that answers every NOTIFY
// with 200 until the benchmark ends.
func newBenchWatcher(b *testing.B) *net.UDPConn {
	watcher, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { watcher.Close() })
	watcher.SetReadBuffer(4 << 20)
	go answerNotifies(watcher)
	return watcher
}

// answerNotifies answers every NOTIFY on c with 200, copying the
// headers a response must echo.
func answerNotifies(c *net.UDPConn) {
	buf := make([]byte, 65536)
	out := make([]byte, 0, 1024)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if !bytes.HasPrefix(buf[:n], []byte("NOTIFY ")) {
			continue // a response (to a SUBSCRIBE): nothing to answer
		}
		head, _, _ := bytes.Cut(buf[:n], []byte("\r\n\r\n"))
		out = append(out[:0], "SIP/2.0 200 OK\r\n"...)
		for _, line := range bytes.Split(head, []byte("\r\n"))[1:] {
			name, _, _ := bytes.Cut(line, []byte(":"))
			switch string(name) {
			case "Via", "From", "To", "Call-ID", "CSeq":
				out = append(append(out, line...), "\r\n"...)
			}
		}
		out = append(out, "Content-Length: 0\r\n\r\n"...)
		c.WriteToUDPAddrPort(out, from)
	}
}

// benchRequests runs requests through the path a worker runs
// (serveDatagram), each rendered by request from a running number and the
// watcher's address, rendered ahead in batches outside the timer.
func benchRequests(b *testing.B, env *testEnv, request func(i int, from netip.AddrPort) []byte) {
	watcher := newBenchWatcher(b)
	from := watcher.LocalAddr().(*net.UDPAddr).AddrPort()
	conn := env.srv.udpConns[0]
	msgs := make([][]byte, 0, 1024)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if len(msgs) == 0 {
			b.StopTimer()
			for range cap(msgs) {
				i++
				msgs = append(msgs, request(i, from))
			}
			b.StartTimer()
		}
		env.srv.serveDatagram(conn, from, msgs[len(msgs)-1])
		msgs = msgs[:len(msgs)-1]
	}
}

// BenchmarkSubscribeRequest runs new SUBSCRIBEs over UDP through the
// request path a worker runs (serveDatagram: read, transaction, handler,
// 200 written to the socket), each with its own Call-ID. The first NOTIFY
// each one queues goes out from the NOTIFY workers meanwhile; the watcher
// answers them.
func BenchmarkSubscribeRequest(b *testing.B) {
	env := newEnv(b, trusted, func(o *Options) { o.MaxSubscriptionsPerSource = 1 << 30 })
	benchRequests(b, env, func(i int, from netip.AddrPort) []byte {
		return fmt.Appendf(nil, "SUBSCRIBE sip:100@127.0.0.1 SIP/2.0\r\n"+
			"Via: SIP/2.0/UDP %s;branch=z9hG4bK-%d;rport\r\nMax-Forwards: 70\r\n"+
			"From: <sip:w@127.0.0.1>;tag=f%d\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: bench-%d\r\n"+
			"CSeq: 1 SUBSCRIBE\r\nContact: <sip:w@%s>\r\nEvent: dialog\r\n"+
			"Accept: application/dialog-info+xml\r\nExpires: 3600\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n",
			from, i, i, i, from)
	})
}

// BenchmarkChallengeRequest runs SUBSCRIBEs without credentials from an
// untrusted address through the worker's path: each is answered 401 with
// a fresh challenge and kept nowhere (the flood of the figure).
func BenchmarkChallengeRequest(b *testing.B) {
	env := newEnv(b)
	benchRequests(b, env, func(i int, from netip.AddrPort) []byte {
		return fmt.Appendf(nil, "SUBSCRIBE sip:100@127.0.0.1 SIP/2.0\r\n"+
			"Via: SIP/2.0/UDP %s;branch=z9hG4bK-%d;rport\r\nMax-Forwards: 70\r\n"+
			"From: <sip:intruder@127.0.0.1>;tag=f%d\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: flood-%d\r\n"+
			"CSeq: 1 SUBSCRIBE\r\nContact: <sip:intruder@%s>\r\nEvent: dialog\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
			from, i, i, i, from)
	})
	if n := env.srv.udpTxs.Size(); n != 0 {
		b.Fatalf("%d transactions kept for challenges", n)
	}
}
