package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// watcher is a phone's BLF key on a real sipgo stack: it listens on UDP
// and TCP on one port (its Contact), subscribes, and answers every NOTIFY
// with 200. It outlives the Lamplighter processes a test starts and stops.
type watcher struct {
	t         *testing.T
	transport string
	port      int
	client    *sipgo.Client
	notifies  chan *sip.Request
	// the dialog
	callID, fromTag, toTag, event, user, server string
	cseq                                        uint32
	// digest credentials, used when a SUBSCRIBE is challenged
	username, password string
	// fromUser is the From's user part ("watcher" when empty): a PBX
	// takes it for the endpoint subscribing
	fromUser string
	// extra headers of every SUBSCRIBE (Supported: eventlist for a list)
	extra []sip.Header
	// domain, when set, is the Request-URI's and To's host (the request
	// still goes to the server's address); fromDomain and toDomain set
	// the From's and To's hosts apart.
	domain, fromDomain, toDomain string
}

func newWatcher(t *testing.T, transport string) *watcher {
	t.Helper()
	ua, srv := newTestUA(t, "WatcherTest/1.0")
	w := &watcher{t: t, transport: transport, notifies: make(chan *sip.Request, 100),
		callID: sip.GenerateTagN(16) + "@watcher", fromTag: sip.GenerateTagN(10)}
	srv.OnNotify(func(req *sip.Request, tx sip.ServerTransaction) {
		w.notifies <- req
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	w.port = serveBoth(t, ua, srv)
	w.client, _ = sipgo.NewClient(ua, sipgo.WithClientLogger(slog.New(slog.DiscardHandler)))
	return w
}

// newTestUA is a sipgo user agent and server for a test's SIP peer, with
// their logs off, closed when the test ends.
func newTestUA(t *testing.T, userAgent string) (*sipgo.UserAgent, *sipgo.Server) {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(userAgent),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(quiet)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	srv, _ := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	return ua, srv
}

// serveBoth serves srv over UDP and TCP on one free loopback port, and
// returns it once sipgo sends from that UDP socket.
func serveBoth(t *testing.T, ua *sipgo.UserAgent, srv *sipgo.Server) int {
	t.Helper()
	pc, ln := listenBoth(t)
	go srv.ServeUDP(pc)
	go srv.ServeTCP(ln)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := ua.TransportLayer().GetConnection("udp", pc.LocalAddr().String()); err == nil && c != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a test peer's socket was never taken by sipgo")
		}
		time.Sleep(2 * time.Millisecond)
	}
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// listenBoth opens UDP and TCP on the same free loopback port.
func listenBoth(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("no port free on both UDP and TCP")
	return nil, nil
}

// freePort returns a loopback port free on both UDP and TCP, for a
// binary started later to bind. It comes from below Linux's ephemeral
// range (32768-60999), so that a connection some other test opens in the
// meantime cannot be given it; each is handed out once per test process.
func freePort(t *testing.T) int {
	t.Helper()
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if _, dup := handedOut.LoadOrStore(p, true); dup {
			continue
		}
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		pc.Close()
		if err != nil {
			continue
		}
		ln.Close()
		return p
	}
	t.Fatal("no port free on both UDP and TCP")
	return 0
}

// handedOut are the ports freePort gave out in this test process.
var handedOut sync.Map

// subscribe opens the dialog (a new one) or refreshes it, and returns the
// final response.
func (w *watcher) subscribe(server, user, event string, expires int) *sip.Response {
	w.t.Helper()
	if w.toTag == "" {
		w.server, w.user, w.event = server, user, event
	}
	host, port, _ := net.SplitHostPort(w.server)
	n, _ := strconv.Atoi(port)
	uri := sip.Uri{Scheme: "sip", User: w.user, Host: host, Port: n}
	toHost, fromHost := host, "127.0.0.1"
	if w.domain != "" {
		uri.Host, uri.Port, toHost = w.domain, 0, w.domain
	}
	if w.toDomain != "" {
		toHost = w.toDomain
	}
	if w.fromDomain != "" {
		fromHost = w.fromDomain
	}
	contact := sip.Uri{Scheme: "sip", User: "watcher", Host: "127.0.0.1", Port: w.port}
	if w.transport == "TCP" {
		uri.UriParams, contact.UriParams = sip.NewParams(), sip.NewParams()
		uri.UriParams.Add("transport", "tcp")
		contact.UriParams.Add("transport", "tcp")
	}
	req := sip.NewRequest(sip.SUBSCRIBE, uri)
	fromUser := w.fromUser
	if fromUser == "" {
		fromUser = "watcher"
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: fromUser, Host: fromHost}, Params: sip.NewParams()}
	from.Params.Add("tag", w.fromTag)
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: w.user, Host: toHost}, Params: sip.NewParams()}
	if w.toTag != "" {
		to.Params.Add("tag", w.toTag)
	}
	cid := sip.CallIDHeader(w.callID)
	w.cseq++
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: w.cseq, MethodName: sip.SUBSCRIBE})
	req.AppendHeader(&sip.ContactHeader{Address: contact})
	req.AppendHeader(sip.NewHeader("Event", w.event))
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	for _, h := range w.extra {
		req.AppendHeader(h)
	}
	if w.transport == "TCP" {
		req.SetTransport("TCP")
	} else {
		req.Laddr = sip.Addr{IP: net.IPv4(127, 0, 0, 1), Port: w.port}
	}
	if w.domain != "" {
		req.SetDestination(w.server)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := w.client.Do(ctx, req)
	if err == nil && (res.StatusCode == 401 || res.StatusCode == 407) && w.username != "" {
		res, err = w.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: w.username, Password: w.password})
		if err == nil {
			w.cseq = res.CSeq().SeqNo
		}
	}
	if err != nil {
		w.t.Fatalf("%s SUBSCRIBE: %v", w.transport, err)
	}
	if res.IsSuccess() && w.toTag == "" {
		w.toTag, _ = res.To().Params.Get("tag")
	}
	return res
}

// notifyWhere waits for a NOTIFY of this dialog whose body or
// Subscription-State contains want.
func (w *watcher) notifyWhere(want string, within time.Duration) *sip.Request {
	w.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case n := <-w.notifies:
			state := ""
			if h := n.GetHeader("Subscription-State"); h != nil {
				state = h.Value()
			}
			if n.CallID().Value() == w.callID && strings.Contains(string(n.Body())+"\n"+state, want) {
				return n
			}
		case <-deadline:
			w.t.Fatalf("%s watcher of %s: no NOTIFY with %q within %v", w.transport, w.user, want, within)
		}
	}
}

// dialogVersion reads the version attribute of a dialog-info NOTIFY.
func dialogVersion(n *sip.Request) (int, error) {
	b := string(n.Body())
	_, rest, ok := strings.Cut(b, "<dialog-info")
	if !ok {
		return 0, fmt.Errorf("not dialog-info: %.200s", b)
	}
	_, rest, ok = strings.Cut(rest, ` version="`)
	if !ok {
		return 0, fmt.Errorf("no version: %.200s", b)
	}
	v, _, _ := strings.Cut(rest, `"`)
	return strconv.Atoi(v)
}
