package presence

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/internal/notifytx"
	"github.com/lamplighter/lamplighter/presence/internal/udptx"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// States is what the server needs from the bridge: the directory, each
// user's state, and a place to put published person state.
// *bridge.Bridge implements it.
type States interface {
	Directory() *bridge.Directory
	State(userID string) (*bridge.State, bool)
	SetPerson(userID, origin string, p bridge.PersonState) error
	ClearPerson(userID, origin string)
	Person(userID, origin string) (bridge.PersonState, bool)
}

// PersonStore keeps person states across restarts (durable.DB is one).
type PersonStore interface {
	SavePerson(userID, origin string, p bridge.PersonState) error
	DeletePerson(userID, origin string) error
}

// Listener is one transport and address to serve SIP on.
type Listener struct {
	Transport string      // udp, tcp or tls
	Address   string      // host:port; port 0 picks a free one
	TLS       *tls.Config // for tls
}

// Options configure a Server. Zero values get the defaults noted.
type Options struct {
	Realm string // digest realm (of the default domain)
	// TenantRealms are tenants' digest realms, by tenant domain, where
	// they are not the domain itself.
	TenantRealms map[string]string
	// DigestAlgorithms are the digest challenges offered, in order:
	// "MD5" and/or "SHA-256" (RFC 8760). Default MD5 alone: RFC 8760 asks
	// clients to skip challenges they do not know, but real ones (baresip
	// 1.0, older desk-phone firmware) give up on the whole 401 instead.
	DigestAlgorithms []string
	UserAgent        string // default "Lamplighter"
	Listen           []Listener
	Trusted          []netip.Prefix
	// Credentials of the users who may SUBSCRIBE, PUBLISH and REGISTER.
	Credentials []Credential
	// Expiry bounds in seconds for SUBSCRIBE, PUBLISH and REGISTER:
	// below min is 423, above max is shortened. Defaults 60, 3600, 600.
	MinExpires, MaxExpires, DefaultExpires int
	// MaxSubscriptionsPerSource bounds the subscriptions one IP address
	// may hold (default 1000).
	MaxSubscriptionsPerSource int
	// MaxBodyBytes bounds request bodies (default 64 KiB).
	MaxBodyBytes int
	// RequestsPerAddress and RequestBurst limit the requests from one
	// untrusted address, over any transport, like Kamailio's pike: a token bucket
	// refilled at RequestsPerAddress a second up to RequestBurst; past it
	// requests are dropped unanswered. 0 (the default): no limit.
	RequestsPerAddress float64
	RequestBurst       int
	// MaxPublicationsPerUser bounds the PUBLISHed states (one per soft
	// client) a person holds at once (default 10); past it a new PUBLISH
	// gets 403.
	MaxPublicationsPerUser int
	// MaxBindingsPerUser bounds a user's registered contacts, like
	// Asterisk's max_contacts (default 10); past it a REGISTER that adds
	// one gets 403, as Asterisk answers.
	MaxBindingsPerUser int
	// Streams bound SIP over TCP and TLS: connections, deadlines.
	Streams StreamLimits
	// UDPBuffer is the receive and send buffer asked for on each UDP
	// socket (default 4 MiB), so that a burst of SUBSCRIBEs or of
	// responses to a NOTIFY fan-out is not dropped. Linux caps it at
	// net.core.rmem_max and wmem_max.
	UDPBuffer int
	// Coalesce gathers bursts of non-urgent changes of one user into one
	// NOTIFY per watcher: a change within Coalesce of the last NOTIFY
	// waits for the window's end. Ringing and the first change after a
	// quiet spell are never delayed. Default 20ms.
	Coalesce time.Duration
	// PickupWait is how long a NOTIFY may wait for the dialog
	// identifiers of a new call leg that its PBX adapter is still reading
	// (bridge.Call.IDsPending), so that no lamp shows a call without them
	// and the very first ringing NOTIFY can be picked up with Replaces.
	// Released at once when they come (a few ms on a LAN); default 250ms;
	// negative: never wait.
	PickupWait time.Duration
	// ContactHost, when set, is the host the Contact of 200s and NOTIFYs
	// names instead of this node's own address: a cluster's virtual IP
	// or name, which reaches whichever node holds it (Via stays this
	// node's, so that answers come here).
	ContactHost string
	// MayNotify, in a cluster, says whether this node may send NOTIFYs
	// now (its lease is fresh and it knows which dialogs it owns); while
	// it says no they wait for Server.Unfence. Nil: always.
	MayNotify func() bool
	// Claim, in a cluster, is asked for a dialog an in-dialog SUBSCRIBE
	// names that this node does not hold: another node's, which this one
	// takes over (the phone now reaches it), storing Reserved of what it
	// returns; ok false for none.
	Claim func(id string) (SavedSubscription, bool)
	// SingleDialog decides, per subscriber, whether dialog-info documents
	// carry only the most important call (nil: never).
	SingleDialog func(userAgent, watcherUserID string) bool
	// NotifyRetries is how many failed NOTIFYs in a row (timeouts, 5xx)
	// end a subscription (default 5).
	NotifyRetries int
	// MaxPendingRequests bounds the requests over UDP waiting for a
	// worker, MaxPendingNotifies the NOTIFYs waiting to be sent or
	// answered; past the first a new request, past the second a new
	// SUBSCRIBE, gets 503 with a Retry-After of 1 to RetryAfter seconds
	// (overload.go). Defaults 4096, 8192 and 5.
	MaxPendingRequests, MaxPendingNotifies, RetryAfter int
	// MaxUDPNotify is the largest NOTIFY sent over UDP (default and
	// most MaxDatagram). A larger one goes over TCP where the phone
	// listens; else a person's document goes compact and a list in
	// several NOTIFYs (list.go). Lower it for phones whose SIP stack reads
	// smaller datagrams (sipgo's reads 32 KiB).
	MaxUDPNotify int
	// Logger for the server's own messages.
	Logger *slog.Logger
	// Metrics receives counts; nil for none.
	Metrics Metrics
	// Store keeps subscriptions, publications and registrations across
	// restarts; nil keeps them in memory only.
	Store Store
	// FlushInterval is how often changes go to the Store (default 1s):
	// the most a crash can lose.
	FlushInterval time.Duration
	// PersonOrigin is the origin under which a phone's DND key
	// (as-feature-event) sets and clears dnd; the daemon gives the API's,
	// so that the key, the API and the switchboard share one dnd.
	// Default "feature-key".
	PersonOrigin string
	// PersonStates keeps what the DND key set across restarts; nil: the
	// bridge alone.
	PersonStates PersonStore
	// Forwarder takes what the server does not answer itself (proxy
	// mode); nil: other methods get 405.
	Forwarder Forwarder
	// ClientTLS is how connections the server opens over TLS (proxy
	// mode, to a PBX) check the peer; default the system's roots, TLS 1.2
	// at least.
	ClientTLS *tls.Config
	// Restore is what the Store held at start-up; Run brings it back
	// before serving. Restored subscriptions get their NOTIFY from
	// NotifyRestored.
	Restore *Saved
}

// Defaults of the policy options; the config file uses the same.
const (
	DefaultMinExpires                = 60
	DefaultMaxExpires                = 3600
	DefaultExpires                   = 600
	DefaultMaxSubscriptionsPerSource = 1000
	DefaultMaxBodyBytes              = 64 << 10
	DefaultMaxPublicationsPerUser    = 10
	DefaultMaxBindingsPerUser        = 10
	DefaultUDPBuffer                 = 4 << 20
	DefaultCoalesce                  = 20 * time.Millisecond
	DefaultPickupWait                = 250 * time.Millisecond
)

func (o *Options) defaults() {
	if o.UserAgent == "" {
		o.UserAgent = "Lamplighter"
	}
	if o.PersonOrigin == "" {
		o.PersonOrigin = "feature-key"
	}
	if o.MinExpires == 0 {
		o.MinExpires = DefaultMinExpires
	}
	if o.MaxExpires == 0 {
		o.MaxExpires = DefaultMaxExpires
	}
	if o.DefaultExpires == 0 {
		o.DefaultExpires = min(DefaultExpires, o.MaxExpires)
	}
	if o.MaxSubscriptionsPerSource == 0 {
		o.MaxSubscriptionsPerSource = DefaultMaxSubscriptionsPerSource
	}
	if o.UDPBuffer == 0 {
		o.UDPBuffer = DefaultUDPBuffer
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxPublicationsPerUser == 0 {
		o.MaxPublicationsPerUser = DefaultMaxPublicationsPerUser
	}
	if o.MaxBindingsPerUser == 0 {
		o.MaxBindingsPerUser = DefaultMaxBindingsPerUser
	}
	if o.Coalesce == 0 {
		o.Coalesce = DefaultCoalesce
	}
	if o.PickupWait == 0 {
		o.PickupWait = DefaultPickupWait
	}
	o.Streams.defaults()
	if o.NotifyRetries == 0 {
		o.NotifyRetries = 5
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.MaxPendingRequests == 0 {
		o.MaxPendingRequests = DefaultMaxPendingRequests
	}
	if o.MaxPendingNotifies == 0 {
		o.MaxPendingNotifies = DefaultMaxPendingNotifies
	}
	if o.RetryAfter == 0 {
		o.RetryAfter = DefaultRetryAfter
	}
	if o.MaxUDPNotify <= 0 || o.MaxUDPNotify > MaxDatagram {
		o.MaxUDPNotify = MaxDatagram
	}
}

// Server is the SIP presence server.
type Server struct {
	opt    Options
	states States
	log    *slog.Logger
	auth   *authenticator

	ua  *sipgo.UserAgent
	srv *sipgo.Server

	subs    *store
	queue   *sendQueue
	fence   fenceState
	paceMu  sync.Mutex           // guards pace; a leaf (taken under the bridge lock)
	pace    map[string]*userPace // user id → coalescing state
	held    atomic.Int64         // users whose ringing NOTIFY waits for ids (holdForIDs)
	pubs    *publications
	regs    *registrar
	strs    *interner // strings subscriptions share
	journal *journal  // nil without a Store

	pkgHost packageHost // what packages may use of the server

	restoreMu sync.Mutex      // guards restored; outermost: the restore under it sets publications' states in the bridge
	restored  []*Subscription // waiting for NotifyRestored

	ctx context.Context // the Run context, for NOTIFY transactions
	// epoch is what subscriptions keep times against (sinceEpoch).
	epoch     time.Time
	ready     chan struct{}
	addrsMu   sync.Mutex // guards addrs; a leaf
	addrs     []net.Addr
	localIPs  sync.Map // remote IP string → local IP string
	closed    atomic.Bool
	listeners []io.Closer
	udpConns  []*net.UDPConn // the UDP listeners, which NOTIFYs leave from
	toSipgo   map[*net.UDPConn]*sipgoConn
	streams   []*streamListener
	limiter   *rateLimiter // nil without a per-address limit
	udpTxs    *udptx.Table // server transactions of requests over UDP
	// requests and datagrams are reused by requests answered and
	// forgotten at once (serveDatagram's recycle): a flood of
	// unauthenticated requests leaves no garbage of them.
	requests  sync.Pool    // *sipmsg.Request
	datagrams sync.Pool    // *[]byte, datagramBytes of capacity
	stopped   atomic.Int32 // serve loops that ended while running
	notifier  *notifytx.Table[*Subscription]
	ids       *idSequence // subscription ids
	workers   int         // request workers (requestWorkers)
	handlers  map[string]requestHandler
	packages  *packages
	winfo     winfoState
	// lifecycles are told as subscriptions begin and end (lifecycle.go).
	lifecycles []lifecycle
	expiry     *expiryWheel
	overloadState
}

// New builds a server; Run starts it.
func New(states States, opt Options) (*Server, error) {
	opt.defaults()
	if len(opt.Listen) == 0 {
		return nil, errors.New("presence: no listeners")
	}
	log := opt.Logger
	quiet := slog.New(demoteHandler{log.Handler()})
	var notify *notifytx.Table[*Subscription] // NOTIFY responses match no sipgo transaction
	// sipgo reads what the guard frames (stream.go): a head up to
	// maxHeadBytes and a body up to MaxBodyBytes, which proxy mode may
	// set past sipgo's own 64 KiB.
	parser := sip.NewParser()
	parser.MaxMessageLength = max(parser.MaxMessageLength, maxHeadBytes+opt.MaxBodyBytes)
	clientTLS := opt.ClientTLS
	if clientTLS == nil {
		clientTLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent(opt.UserAgent),
		sipgo.WithUserAgentParser(parser),
		sipgo.WithUserAgenTLSConfig(clientTLS),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(quiet),
			sip.WithTransactionLayerUnhandledResponseHandler(func(res *sip.Response) {
				if !notify.Response(res) && opt.Forwarder != nil {
					opt.Forwarder.Response(res) // a forwarded INVITE's, or a stray
				}
			}),
		),
	)
	if err != nil {
		return nil, err
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	if err != nil {
		return nil, err
	}
	s := &Server{
		epoch:    time.Now().Add(-time.Second),
		requests: sync.Pool{New: func() any { return new(sipmsg.Request) }},
		datagrams: sync.Pool{New: func() any {
			b := make([]byte, 0, datagramBytes)
			return &b
		}},
		opt: opt, states: states, log: log,
		auth: newAuthenticator(opt.Realm, opt.DigestAlgorithms, opt.Trusted, opt.Credentials),
		ua:   ua, srv: srv,
		subs:  newStore(),
		pace:  map[string]*userPace{},
		queue: newSendQueue(),
		ready: make(chan struct{}),
		pkgHost: packageHost{states: states, origin: opt.PersonOrigin, saved: opt.PersonStates,
			log: log},
	}
	s.auth.realms = opt.TenantRealms
	s.auth.tenantOf = func(host string) (string, bool) { return s.states.Directory().Tenant(host) }
	s.auth.sees = func(watcher, target string) bool { return s.states.Directory().Sees(watcher, target) }
	s.notifier = notifytx.New(s.notifyTxDone, DefaultWriteTimeout)
	if opt.Forwarder != nil {
		s.auth.flowUser = s.flowUser
		s.auth.isUser = func(id string) bool { _, ok := s.states.Directory().User(id); return ok }
	}

	s.limiter = newRateLimiter(opt.RequestsPerAddress, opt.RequestBurst)
	s.udpTxs = udptx.NewTable()
	s.work = make(chan udpJob, opt.MaxPendingRequests)
	s.workers = requestWorkers()
	s.ids = newIDSequence()
	s.handlers = s.makeHandlers()
	s.packages = makePackages()
	s.winfo.wake = make(chan struct{}, 1)
	s.winfo.s = s
	s.lifecycles = []lifecycle{&s.winfo}
	s.expiry = newExpiryWheel()
	notify = s.notifier
	s.pubs = newPublications(s)
	s.regs = newRegistrar()
	s.strs = newInterner(internMaxBytes)
	if opt.Store != nil {
		s.journal = newJournal(opt.Store, opt.FlushInterval, log)
	}
	// Requests Lamplighter answers never reach sipgo (request.go): it
	// answers the other methods.
	srv.OnNoRoute(s.handleOther)
	return s, nil
}

// SetCredentials replaces the users' SIP credentials (a reload) and ends
// the subscriptions of watchers the new ones no longer let in: a watcher
// removed gets terminated;reason=rejected, one whose password changed
// reason=deactivated (a new SUBSCRIBE with the new password is welcome).
// It returns how many subscriptions ended.
func (s *Server) SetCredentials(creds []Credential) int {
	s.auth.setCredentials(creds)
	ended := 0
	for _, sub := range s.subs.all() {
		if reason := s.auth.revoked(sub.Grant, sub.Source, sub.Watcher); reason != "" {
			s.log.Info("watcher no longer allowed: ending the subscription", "user", sub.UserID,
				"watcher", sub.Watcher, "source", sub.Source, "reason", reason)
			s.terminate(sub, reason)
			ended++
		}
	}
	return ended
}

// Ready is closed once every listener is bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the bound addresses, in the order of Options.Listen.
func (s *Server) Addrs() []net.Addr {
	s.addrsMu.Lock()
	defer s.addrsMu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// Run binds the listeners and serves until ctx ends. An address that
// cannot be bound is an error returned at once.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.ctx = ctx
	type serve func() error
	var serves []serve
	var readers []*sipgoConn
	for _, l := range s.opt.Listen {
		switch strings.ToLower(l.Transport) {
		case "udp":
			pc, err := net.ListenPacket("udp", l.Address)
			if err != nil {
				s.closeListeners()
				return fmt.Errorf("sip udp %s: %w", l.Address, err)
			}
			s.sizeBuffers(pc)
			sc := newSipgoConn(pc.(*net.UDPConn))
			s.udpConns = append(s.udpConns, sc.UDPConn)
			if s.toSipgo == nil {
				s.toSipgo = map[*net.UDPConn]*sipgoConn{}
			}
			s.toSipgo[sc.UDPConn] = sc
			s.listeners = append(s.listeners, sc)
			s.addrs = append(s.addrs, pc.LocalAddr())
			serves = append(serves, func() error { return s.srv.ServeUDP(sc) })
			readers = append(readers, sc)
		case "tcp", "tls":
			ln, err := net.Listen("tcp", l.Address)
			if err != nil {
				s.closeListeners()
				return fmt.Errorf("sip %s %s: %w", l.Transport, l.Address, err)
			}
			s.addrs = append(s.addrs, ln.Addr())
			if strings.ToLower(l.Transport) == "tls" {
				if l.TLS == nil {
					ln.Close()
					s.closeListeners()
					return fmt.Errorf("sip tls %s: no certificate", l.Address)
				}
				sl := newStreamListener(s, ln, l.TLS)
				s.listeners = append(s.listeners, sl)
				s.streams = append(s.streams, sl)
				serves = append(serves, func() error { return s.srv.ServeTLS(sl) })
			} else {
				sl := newStreamListener(s, ln, nil)
				s.listeners = append(s.listeners, sl)
				s.streams = append(s.streams, sl)
				serves = append(serves, func() error { return s.srv.ServeTCP(sl) })
			}
		default:
			s.closeListeners()
			return fmt.Errorf("sip: unknown transport %q", l.Transport)
		}
	}
	if s.opt.Restore != nil {
		s.restoreMu.Lock()
		s.restore(s.opt.Restore)
		s.restoreMu.Unlock()
		s.opt.Restore = nil
	}
	var wg sync.WaitGroup
	if s.journal != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.journal.run(ctx, s.regs)
		}()
	}
	for _, f := range serves {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := f()
			if !s.closed.Load() {
				s.stopped.Add(1)
				s.log.Error("sip listener stopped", "err", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.runWinfo(ctx)
	}()
	s.awaitSipgo(ctx, readers)
	if s.opt.Forwarder != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.opt.Forwarder.Run(ctx, s); err != nil {
				s.log.Error("proxy stopped", "err", err)
			}
		}()
	}
	for _, sc := range readers {
		for range udpReaders() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.readUDP(sc)
			}()
		}
	}
	for range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveRequests(ctx)
		}()
	}
	workers := 8
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.sendLoop(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		everySecond(ctx, s.pubs.expire)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		everySecond(ctx, func(now time.Time) { s.udpTxs.Expire(now.Add(-sip.Timer_J)) })
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		everySecond(ctx, s.expireDue)
	}()
	// NOTIFYs leave from the UDP listeners themselves (udpConns), so
	// readiness needs no more than the bound sockets.
	for i, a := range s.addrs {
		s.log.Info("sip listening", "transport", s.opt.Listen[i].Transport, "address", a.String())
	}
	close(s.ready)
	<-ctx.Done()
	s.closed.Store(true)
	s.closeListeners()
	s.queue.close()
	s.notifier.Close()
	s.ua.Close()
	wg.Wait()
	if s.journal != nil {
		s.journal.flush(s.regs) // what changed since the last tick
	}
	return nil
}

// awaitSipgo waits (at most two seconds) until sipgo's transport layer
// has taken each UDP listener (its ServeUDP runs in a goroutine of its
// own): a sipgo client that sends before then (the proxy's first health
// OPTIONS) tries to bind the listener's address itself, and fails.
func (s *Server) awaitSipgo(ctx context.Context, udp []*sipgoConn) {
	deadline := time.Now().Add(2 * time.Second)
	for _, sc := range udp {
		addr := sc.LocalAddr().String()
		for {
			c, err := s.ua.TransportLayer().GetConnection("udp", addr)
			if err == nil && c != nil {
				c.TryClose() // GetConnection took a reference
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				s.log.Warn("sip: the UDP listener is not serving yet", "address", addr)
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// sizeBuffers asks for UDPBuffer on a UDP socket and warns when the
// kernel grants much less.
func (s *Server) sizeBuffers(pc net.PacketConn) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return
	}
	_ = uc.SetReadBuffer(s.opt.UDPBuffer)
	_ = uc.SetWriteBuffer(s.opt.UDPBuffer)
	raw, err := uc.SyscallConn()
	if err != nil {
		return
	}
	reported := 0
	raw.Control(func(fd uintptr) { reported, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF) })
	// Linux reports twice what it grants (its bookkeeping overhead).
	if granted := reported / 2; granted > 0 && granted < s.opt.UDPBuffer/2 {
		s.log.Warn("UDP receive buffer under half of what was asked: bursts may be dropped; raise net.core.rmem_max",
			"address", pc.LocalAddr().String(), "asked", s.opt.UDPBuffer, "granted", granted)
	}
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.Close()
	}
}

// onDatagram sees every datagram a UDP listener reads. It answers what
// cannot be read whole (413), applies the per-address limit, queues the
// requests Lamplighter serves for its workers (or sheds them when the
// queue is full), and matches responses to NOTIFYs; it reports whether
// sipgo should read the datagram (other methods). It runs in the readers
// of the socket, so it does as little as it can.
func (s *Server) onDatagram(conn *net.UDPConn, from netip.AddrPort, data []byte) (forSipgo bool) {
	if !isRawRequest(data) {
		return s.notifier.Datagram(data, from) != nil
	}
	switch {
	case len(data) >= maxRequestDatagram:
		// Larger than any request served here needs (and than sipgo
		// reads): said so rather than dropped.
		s.answerDatagram(conn, from, data, 413, "Request Entity Too Large")
	case !s.admitSource(from.Addr()):
		// dropped unanswered
	case s.serves(rawMethod(data)):
		// Ours: everything else happens in a worker, so that the
		// readers keep up with any burst.
		s.queueDatagram(conn, from, data)
	default:
		if why := badContentLength(data); why != "" {
			s.answerDatagram(conn, from, data, 400, why)
			return false
		}
		return true // other methods: sipgo's
	}
	return false
}

// Serving reports whether every listener is serving: none has stopped,
// and no stream listener's accept has been failing since its last
// success.
func (s *Server) Serving() bool {
	if s.stopped.Load() > 0 {
		return false
	}
	for _, l := range s.streams {
		if l.Failing() {
			return false
		}
	}
	return true
}

// StreamConnections returns the number of SIP connections over TCP and
// TLS held open.
func (s *Server) StreamConnections() int {
	n := 0
	for _, l := range s.streams {
		n += l.Open()
	}
	return n
}

// Subscriptions returns the number of active subscriptions, in total and
// per package.
func (s *Server) Subscriptions() (total int, byPackage map[Package]int) { return s.subs.count() }

// SubscriptionsByKind returns the number of active subscriptions per
// event package and transport.
func (s *Server) SubscriptionsByKind() map[SubscriptionKind]int { return s.subs.countByKind() }

// Watchers returns the number of subscriptions to one user.
func (s *Server) Watchers(userID string) int { return len(s.subs.watchers(userID, nil)) }

func init() {
	// sipgo refuses to write any UDP message over UDPMTUSize-200 bytes
	// (1,300), responses included: a REGISTER with many bindings or a
	// SUBSCRIBE that came through several proxies took effect and its
	// answer was dropped. RFC 3261 §18.2.2 sends a response over the
	// transport its request came on, whatever its size (the network
	// fragments it), so the bound is lifted to what a datagram holds. Set
	// once, before any transport exists.
	sip.UDPMTUSize = 65507 + 200
}

// authenticate checks req and answers 401 itself when it fails; ok tells
// the handler whether to go on.
func (s *Server) authenticate(req *sipmsg.Request, tx serverTx) (identity, bool) {
	id, out := s.auth.check(req)
	switch out {
	case authOK:
		return id, true
	case authFailed:
		s.opt.Metrics.AuthFailure(methodLabel(req.Method))
		s.log.Info("authentication failed", "method", req.Method, "source", req.Source)
	case authReplay:
		s.opt.Metrics.AuthFailure(methodLabel(req.Method))
		s.log.Info("digest replay refused: a nonce count used before", "method", req.Method, "source", req.Source)
	}
	s.challenge(req, tx, out == authStale, nil)
	return identity{}, false
}

// challenge answers req 401 with challenges for it (a nonce bound to its
// host and Call-ID), written into buf (nil: a buffer of its own).
func (s *Server) challenge(req *sipmsg.Request, tx serverTx, stale bool, buf []byte) {
	if buf == nil {
		buf = make([]byte, 0, 512+len(req.CallID))
	}
	b := sipmsg.AppendResponse(buf, req, 401, "Unauthorized", "")
	b = s.auth.appendChallenges(b, "WWW-Authenticate", req, stale)
	s.send(req, tx, b, 401)
}

const allowedMethods = "SUBSCRIBE, NOTIFY, PUBLISH, REGISTER, OPTIONS"

func (s *Server) handleOptions(req *sipmsg.Request, tx serverTx) {
	s.reply(req, tx, 200, "OK",
		field{"Allow", allowedMethods},
		field{"Allow-Events", s.packages.allowEvents},
		field{"Accept", s.packages.accept},
		field{"Accept-Language", "en"},
		field{"Supported", "eventlist"},
	)
}

func (s *Server) handleUnknown(req *sip.Request, tx sip.ServerTransaction) {
	if req.IsAck() {
		return
	}
	res := sip.NewResponseFromRequest(req, 405, "Method Not Allowed", nil)
	res.AppendHeader(sip.NewHeader("Allow", allowedMethods))
	res.AppendHeader(sip.NewHeader("Server", s.opt.UserAgent))
	if err := tx.Respond(res); err == nil {
		s.opt.Metrics.Response(methodLabel(string(req.Method)), 405)
	}
}

// headerValue returns a header's value, or "" when it is absent.
func headerValue(req *sipmsg.Request, k sipmsg.Key) string {
	v, _ := req.Get(k)
	return v
}

// expiresOf reads a request's Expires header: the default when absent, -1
// when malformed.
func (s *Server) expiresOf(req *sipmsg.Request) int {
	v, ok := req.Get(sipmsg.Expires)
	if !ok {
		return s.opt.DefaultExpires
	}
	return parseDeltaSeconds(v)
}

// parseDeltaSeconds reads delta-seconds (RFC 3261 §25.1): digits only; a
// value above 2^32-1 counts as 2^32-1 (§20.19), to be shortened by the
// expiry policy. It returns -1 for anything else.
func parseDeltaSeconds(v string) int {
	v = strings.TrimSpace(v)
	if v == "" || strings.TrimLeft(v, "0123456789") != "" {
		return -1
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		n = 1<<32 - 1 // all digits: only too large
	}
	return int(min(n, 1<<31-1))
}

// clampExpires applies the policy: 0 stays 0, below min is too brief
// (false), above max is shortened.
func (s *Server) clampExpires(n int) (int, bool) {
	switch {
	case n == 0:
		return 0, true
	case n < s.opt.MinExpires:
		return n, false
	case n > s.opt.MaxExpires:
		return s.opt.MaxExpires, true
	}
	return n, true
}

func (s *Server) intervalTooBrief(req *sipmsg.Request, tx serverTx) {
	s.reply(req, tx, 423, "Interval Too Brief", field{"Min-Expires", strconv.Itoa(s.opt.MinExpires)})
}

// parseAddrPort reads host:port as an address (IPv4-mapped unmapped);
// the zero AddrPort when it is not one.
func parseAddrPort(s string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// parseEvent splits an Event header into package token and id parameter.
func parseEvent(v string) (pkg, id string) {
	first, params, _ := strings.Cut(v, ";")
	pkg = lowerASCII(strings.TrimSpace(first))
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(k, "id") {
			id = strings.Trim(val, `"`)
		}
	}
	return pkg, id
}

// lowerASCII is strings.ToLower without an allocation when s has no
// upper-case letter (a package name as phones send it).
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// localAddr is the address we advertise (Via, Contact) to reach a
// subscriber over a transport: the listener's own address, or where it is
// a wildcard, the local address the routing table picks for the peer.
func (s *Server) localAddr(transport, peer string) (string, int) {
	want := "udp"
	if transport != "UDP" {
		want = "tcp"
	}
	peerHost := hostOnly(peer)
	peerIP, _ := netip.ParseAddr(strings.Trim(peerHost, "[]"))
	for i, l := range s.opt.Listen {
		lt := strings.ToLower(l.Transport)
		if (want == "udp") != (lt == "udp") || (transport == "TLS") != (lt == "tls") {
			continue
		}
		ap, ok := addrPortOf(s.addrs[i])
		if !ok {
			continue
		}
		if peerIP.IsValid() && peerIP.Unmap().Is4() != ap.Addr().Unmap().Is4() && !ap.Addr().IsUnspecified() {
			continue
		}
		host := ap.Addr().Unmap()
		if host.IsUnspecified() {
			host = s.routeTo(peerIP)
		}
		// Every subscription over a listener shares this string.
		var buf [64]byte
		return s.strs.getBytes(host.AppendTo(buf[:0])), int(ap.Port())
	}
	return "127.0.0.1", 5060
}

// addrPortOf is a listener's address as an AddrPort, without going
// through its string.
func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort(), true
	case *net.TCPAddr:
		return a.AddrPort(), true
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}

// routeTo returns the local IP the kernel would use to reach ip.
func (s *Server) routeTo(ip netip.Addr) netip.Addr {
	if !ip.IsValid() {
		return netip.MustParseAddr("127.0.0.1")
	}
	key := ip.String()
	if v, ok := s.localIPs.Load(key); ok {
		return v.(netip.Addr)
	}
	local := netip.MustParseAddr("127.0.0.1")
	if c, err := net.Dial("udp", netip.AddrPortFrom(ip, 9).String()); err == nil {
		if ap, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
			local = ap.Addr().Unmap()
		}
		c.Close()
	}
	s.localIPs.Store(key, local)
	return local
}

// demoteHandler logs sipgo's own messages one level lower (its errors are
// about peers' malformed packets: noise for an administrator, not news).
type demoteHandler struct{ slog.Handler }

func (h demoteHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, demote(l))
}

func (h demoteHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demote(r.Level)
	return h.Handler.Handle(ctx, r)
}

func (h demoteHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return demoteHandler{h.Handler.WithAttrs(as)}
}

func (h demoteHandler) WithGroup(n string) slog.Handler { return demoteHandler{h.Handler.WithGroup(n)} }

func demote(l slog.Level) slog.Level {
	if l >= slog.LevelWarn {
		return slog.LevelDebug
	}
	return slog.LevelDebug - 4
}
