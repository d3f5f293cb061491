package presence

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
)

func TestMain(m *testing.M) {
	// Short SIP timers: Timer F (a NOTIFY nobody answers) is 64*T1.
	sip.SetTimers(50*time.Millisecond, 400*time.Millisecond, 500*time.Millisecond)
	// As the daemon does: sipgo's package logger warns of its own
	// reference bookkeeping when connections close (see cmd/lamplighter).
	sip.SetDefaultLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	os.Exit(m.Run())
}

// testEnv is a bridge and a running presence server on loopback.
type testEnv struct {
	t      testing.TB
	bridge *bridge.Bridge
	srv    *Server
	udp    string // server's UDP address
	tcp    string // server's TCP address
	stop   func() // stops the server (also at cleanup)
}

type envOption func(*Options)

func trusted(o *Options) { o.Trusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func newEnv(t testing.TB, opts ...envOption) *testEnv {
	t.Helper()
	dir, err := bridge.NewDirectory([]bridge.User{
		{ID: "debbie", Name: "Debbie Harry", Extensions: []string{"100"}, Aliases: []string{"debbie"},
			Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}},
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/101"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return newEnvDir(t, dir, opts...)
}

// newEnvDir is newEnv on a directory of the test's own: every device of
// its users starts idle on PBX "pbx".
func newEnvDir(t testing.TB, dir *bridge.Directory, opts ...envOption) *testEnv {
	t.Helper()
	b := bridge.New(dir)
	idle := map[string]bridge.DeviceState{}
	for _, u := range dir.Users() {
		for _, d := range u.Devices {
			idle[d.Device] = bridge.DeviceIdle
		}
	}
	b.Apply(bridge.Snapshot{Source: "pbx", Devices: idle})
	opt := Options{
		Realm:  "test.invalid",
		Listen: []Listener{{Transport: "udp", Address: "127.0.0.1:0"}, {Transport: "tcp", Address: "127.0.0.1:0"}},
		Credentials: []Credential{
			{Username: "debbie", UserID: "debbie", Password: "d-secret"},
			{Username: "bob", UserID: "bob", Password: "b-secret"},
		},
		Coalesce:         30 * time.Millisecond,
		DigestAlgorithms: []string{"SHA-256", "MD5"},
	}
	if testing.Verbose() {
		opt.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, o := range opts {
		o(&opt)
	}
	srv, err := New(b, opt)
	if err != nil {
		t.Fatal(err)
	}
	b.Listen(srv.HandleChange)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server did not start: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("server not ready within 5s")
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Error("server did not stop within 5s")
			}
		})
	}
	t.Cleanup(stop)
	env := &testEnv{t: t, bridge: b, srv: srv, stop: stop}
	for _, a := range srv.Addrs() {
		if a.Network() == "udp" && env.udp == "" {
			env.udp = a.String()
		} else if a.Network() == "tcp" && env.tcp == "" {
			env.tcp = a.String()
		}
	}
	return env
}

// phone is a SIP user agent on loopback that subscribes and answers
// NOTIFYs: a real sipgo stack on real sockets.
type phone struct {
	t         *testing.T
	ua        *sipgo.UserAgent
	client    *sipgo.Client
	addr      *net.UDPAddr
	transport string
	notifies  chan *sip.Request
	answer    atomic.Int32 // status for NOTIFYs; 0 drops them unanswered
	user      string
	password  string
}

func newPhone(t *testing.T, transport string) *phone { return newPhoneOn(t, transport, "127.0.0.1") }

// newPhoneOn makes a phone whose UDP socket is on host (127.0.0.1 or ::1).
// Over TLS it trusts any certificate (the test server's is self-signed).
func newPhoneOn(t *testing.T, transport, host string) *phone {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("TestPhone/1.0"),
		sipgo.WithUserAgenTLSConfig(&tls.Config{InsecureSkipVerify: true}),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(quiet)))
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	p := &phone{t: t, ua: ua, transport: transport, notifies: make(chan *sip.Request, 100)}
	p.answer.Store(200)
	srv.OnNotify(func(req *sip.Request, tx sip.ServerTransaction) {
		p.notifies <- req
		if code := int(p.answer.Load()); code != 0 {
			tx.Respond(sip.NewResponseFromRequest(req, code, "Answer", nil))
		}
	})
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	p.addr = pc.LocalAddr().(*net.UDPAddr)
	go srv.ServeUDP(pc)
	if transport == "TCP" {
		// Its Contact says transport=tcp on the same port: a NOTIFY
		// after the server restarted (its connection gone) comes here.
		if ln, err := net.Listen("tcp", p.addr.String()); err == nil {
			go srv.ServeTCP(ln)
		}
	}
	waitUntil(t, 5*time.Second, "phone socket registered", func() bool {
		c, err := ua.TransportLayer().GetConnection("udp", p.addr.String())
		return err == nil && c != nil
	})
	p.client, _ = sipgo.NewClient(ua, sipgo.WithClientLogger(quiet))
	t.Cleanup(func() { ua.Close() })
	return p
}

// subReq describes a SUBSCRIBE.
type subReq struct {
	user      string // presentity user part
	event     string
	expires   int // -1: no Expires header
	accept    string
	noContact bool
	body      []byte
	headers   []sip.Header // added as they are
}

// dialog is the subscriber's side of a subscription.
type dialog struct {
	callID  string
	fromTag string
	toTag   string
	cseq    uint32
	uri     sip.Uri
	event   string
}

func (p *phone) target(server string, user string) sip.Uri {
	host, port, _ := net.SplitHostPort(server)
	n, _ := strconv.Atoi(port)
	u := sip.Uri{Scheme: "sip", User: user, Host: uriHost(host), Port: n}
	if p.transport != "UDP" {
		u.UriParams = sip.NewParams()
		u.UriParams.Add("transport", strings.ToLower(p.transport))
	}
	return u
}

// buildSubscribe makes a SUBSCRIBE for d (new when d.toTag is "").
func (p *phone) buildSubscribe(d *dialog, r subReq) *sip.Request {
	req := sip.NewRequest(sip.SUBSCRIBE, d.uri)
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "watcher", Host: "127.0.0.1"}, Params: sip.NewParams()}
	from.Params.Add("tag", d.fromTag)
	req.AppendHeader(from)
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: d.uri.User, Host: d.uri.Host}, Params: sip.NewParams()}
	if d.toTag != "" {
		to.Params.Add("tag", d.toTag)
	}
	req.AppendHeader(to)
	cid := sip.CallIDHeader(d.callID)
	req.AppendHeader(&cid)
	d.cseq++
	req.AppendHeader(&sip.CSeqHeader{SeqNo: d.cseq, MethodName: sip.SUBSCRIBE})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	if !r.noContact {
		c := sip.Uri{Scheme: "sip", User: "watcher", Host: uriHost(p.addr.IP.String()), Port: p.addr.Port}
		if p.transport != "UDP" {
			c.UriParams = sip.NewParams()
			c.UriParams.Add("transport", strings.ToLower(p.transport))
		}
		req.AppendHeader(&sip.ContactHeader{Address: c})
	}
	if r.event != "" {
		req.AppendHeader(sip.NewHeader("Event", r.event))
	}
	for _, h := range r.headers {
		req.AppendHeader(h)
	}
	if r.expires >= 0 {
		req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(r.expires)))
	}
	if r.accept != "" {
		req.AppendHeader(sip.NewHeader("Accept", r.accept))
	}
	req.AppendHeader(sip.NewHeader("User-Agent", "TestPhone/1.0"))
	req.SetBody(r.body)
	if p.transport != "UDP" {
		req.SetTransport(p.transport)
	} else {
		req.Laddr = sip.Addr{IP: p.addr.IP, Port: p.addr.Port}
	}
	return req
}

// do sends req and returns the final response, answering one digest
// challenge when the phone has credentials.
func (p *phone) do(req *sip.Request) *sip.Response {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := p.client.Do(ctx, req)
	if err != nil {
		p.t.Fatalf("%s: %v", req.Method, err)
	}
	if res.StatusCode == 401 && p.user != "" {
		res, err = p.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: p.user, Password: p.password})
		if err != nil {
			p.t.Fatalf("%s with auth: %v", req.Method, err)
		}
	}
	return res
}

// subscribe sends a new SUBSCRIBE to the server and returns the response
// and the dialog (toTag set on 2xx).
func (p *phone) subscribe(server string, r subReq) (*sip.Response, *dialog) {
	p.t.Helper()
	d := &dialog{callID: sip.GenerateTagN(16) + "@test", fromTag: sip.GenerateTagN(10), uri: p.target(server, r.user), event: r.event}
	res := p.do(p.buildSubscribe(d, r))
	if res.IsSuccess() {
		d.toTag, _ = res.To().Params.Get("tag")
		d.cseq = res.CSeq().SeqNo
	}
	return res, d
}

// refresh sends an in-dialog SUBSCRIBE.
func (p *phone) refresh(d *dialog, expires int) *sip.Response {
	p.t.Helper()
	return p.do(p.buildSubscribe(d, subReq{event: d.event, expires: expires}))
}

// nextNotify waits for the next NOTIFY.
func (p *phone) nextNotify(within time.Duration) *sip.Request {
	p.t.Helper()
	select {
	case n := <-p.notifies:
		return n
	case <-time.After(within):
		p.t.Fatalf("no NOTIFY within %v", within)
	}
	return nil
}

// notifyWhere waits for a NOTIFY whose body contains want, skipping others.
func (p *phone) notifyWhere(want string, within time.Duration) *sip.Request {
	p.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case n := <-p.notifies:
			if strings.Contains(string(n.Body()), want) {
				return n
			}
		case <-deadline:
			p.t.Fatalf("no NOTIFY with %q within %v", want, within)
		}
	}
}

// noNotify asserts that no NOTIFY arrives for a while.
func (p *phone) noNotify(within time.Duration) {
	p.t.Helper()
	select {
	case n := <-p.notifies:
		p.t.Fatalf("unexpected NOTIFY:\n%s", n)
	case <-time.After(within):
	}
}

func header(m interface{ GetHeader(string) sip.Header }, name string) string {
	if h := m.GetHeader(name); h != nil {
		return h.Value()
	}
	return ""
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// flap makes debbie's call flip between ringing and answered as fast as
// the bridge takes it, until the returned function is called.
func (e *testEnv) flap() (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if i%2 == 0 {
				e.bridge.Apply(ringing("101"))
			} else {
				e.bridge.Apply(answered("101"))
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func ringing(from string) bridge.Event {
	return bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "c1", Device: "PJSIP/100",
		Direction: bridge.Incoming, State: bridge.CallEarly, Remote: bridge.Party{Number: from, Name: "Caller " + from},
		CallID: "abc@pbx", LocalTag: "lt", RemoteTag: "rt", Started: time.Now()}}
}

func answered(from string) bridge.Event {
	ev := ringing(from).(bridge.CallUpdated)
	ev.Call.State = bridge.CallConfirmed
	return ev
}

// testMetrics records what the server counts.
type testMetrics struct {
	nopMetrics
	failed chan string
	sent   atomic.Int64
}

func newTestMetrics() *testMetrics { return &testMetrics{failed: make(chan string, 100)} }

func (m *testMetrics) NotifyFailed(reason string) {
	select {
	case m.failed <- reason:
	default:
	}
}

func (m *testMetrics) NotifySent(Package, string) { m.sent.Add(1) }

// uriHost is how the test phone writes a host into a URI: sipgo brackets
// an IPv6 address when it writes one, but resolves destinations from the
// raw host, which must then carry its brackets.
func uriHost(h string) string {
	if strings.Contains(h, ":") && !strings.HasPrefix(h, "[") {
		return "[" + h + "]"
	}
	return h
}
