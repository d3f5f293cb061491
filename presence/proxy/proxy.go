// Package proxy is Lamplighter's proxy mode: a phone keeps one line whose
// outbound proxy is Lamplighter. The presence server answers what it
// serves (SUBSCRIBE for its packages, PUBLISH); everything else goes on to
// the phone's PBX through this package, a transaction-stateful proxy
// (RFC 3261 §16) built on sipgo's client and server transactions:
// REGISTER with a Path (RFC 3327) so that the PBX's requests for the phone
// come back the same way, calls, BYE, CANCEL, REFER, the PBX's own
// subscriptions (message-summary), and their responses. The PBX keeps
// doing all authentication: challenges pass through end to end.
//
// A REGISTER the PBX accepted through the proxy makes its flow (source
// address and transport) stand for the phone's user, so that the phone's
// SUBSCRIBE and PUBLISH on that flow need no second password (see
// FlowUser). Forwarding and presence fail apart: a PBX that does not
// answer gets its phones' requests refused with 503, and presence goes on.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Target is a PBX that phones' requests are forwarded to.
type Target struct {
	// Name is the PBX's name in the config.
	Name string
	// Host is its SIP address: a name or an IP address.
	Host string
	// Port defaults to 5060 (5061 for TLS).
	Port int
	// Transport is udp (default), tcp or tls.
	Transport string
	// Dedicated says the PBX's phones keep their own line to the PBX and
	// a second, busy-lamp line registered to Lamplighter (dedicated.go):
	// REGISTER stays here, and a call from the busy-lamp line is
	// authenticated here and sent on to the PBX, or redirected to it when
	// Redirect is set. Otherwise phones use Lamplighter as the outbound
	// proxy of their one line.
	Dedicated bool
	Redirect  bool
	// Kind is the PBX's kind in the config (ari, esl, sip): how it takes
	// an answer to its qualify OPTIONS for a phone whose connection is
	// gone (see toPhone).
	Kind string
}

func (t *Target) defaults() {
	t.Transport = strings.ToUpper(t.Transport)
	if t.Transport == "" {
		t.Transport = "UDP"
	}
	if t.Port == 0 {
		t.Port = 5060
		if t.Transport == "TLS" {
			t.Port = 5061
		}
	}
}

// HostPort is where the target's requests go.
func (t Target) HostPort() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// Options configure a Proxy. Zero values get the defaults noted.
type Options struct {
	// Targets are the PBXs in proxy mode; at least one.
	Targets []Target
	// TargetFor names the proxied PBX of a user part (an extension or
	// alias, as phones register and call from) in a domain (a tenant's,
	// where there are tenants), "" when the user's PBX is not in proxy
	// mode or the user is unknown. Nil: every phone belongs to the first
	// target.
	TargetFor func(user, domain string) string
	// RequireDigest makes registered flows stand for nothing: SUBSCRIBE
	// and PUBLISH need a password (or a trusted network) as without the
	// proxy. UDP source addresses can be forged on a LAN.
	RequireDigest bool
	// MaxTransactions bounds the forwarded transactions held (default
	// 10000): in flight, and over UDP kept up to 32 s after their answer
	// for retransmissions; past it requests get 503.
	MaxTransactions int
	// MaxBindings bounds the registrations remembered for routing and
	// flow trust (default 100000).
	MaxBindings int
	// TimerC is how long a forwarded INVITE may ring with no final
	// response before it is cancelled (RFC 3261 §16.6: more than three
	// minutes; default 3m10s).
	TimerC time.Duration
	// HealthInterval is how often each target is sent OPTIONS while it
	// answers (default 5s; while it does not, every second); one
	// unanswered (within 2 s) makes it down until one is answered again.
	HealthInterval time.Duration
	// Logger for the proxy's messages.
	Logger *slog.Logger
	// Metrics receives counts; nil for none.
	Metrics Metrics
	// Calls learns of the calls and registrations the proxy carries
	// (calls.go); nil for none.
	Calls CallObserver
	// Dialogs finds the call legs Lamplighter shows by SIP Call-ID, so
	// that a pickup's Replaces is put the way the PBX matches it
	// (replaces.go); nil: Replaces passes as the phone wrote it.
	Dialogs DialogFinder
	// StateDir is where the registrations accepted through the proxy are
	// kept across restarts (BindingsFile, keep.go); "" keeps none.
	StateDir string
	// TokenKey (32 bytes) signs the tokens in Path and Record-Route
	// (flow.go). Keep it across restarts (LoadTokenKey): with a new one,
	// the PBX's requests for phones that registered before the restart
	// find their flow only by contact until the phones register again.
	// Nil: a random key.
	TokenKey []byte
}

// Defaults of Options.
const (
	DefaultMaxTransactions = 10000
	DefaultMaxBindings     = 100000
	DefaultTimerC          = 3*time.Minute + 10*time.Second
	DefaultHealthInterval  = 5 * time.Second
)

func (o *Options) defaults() {
	if o.MaxTransactions == 0 {
		o.MaxTransactions = DefaultMaxTransactions
	}
	if o.MaxBindings == 0 {
		o.MaxBindings = DefaultMaxBindings
	}
	if o.TimerC == 0 {
		o.TimerC = DefaultTimerC
	}
	if o.HealthInterval == 0 {
		o.HealthInterval = DefaultHealthInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
}

// Metrics receives the proxy's counts. cmd/lamplighter implements it with
// Prometheus.
type Metrics interface {
	// Forwarded counts a request sent on, by method.
	Forwarded(method string)
	// Answered counts a response sent back to where a forwarded request
	// came from (relayed or the proxy's own), by method and code.
	Answered(method string, code int)
}

type nopMetrics struct{}

func (nopMetrics) Forwarded(string)     {}
func (nopMetrics) Answered(string, int) {}

// Proxy forwards requests between phones and their PBXs. Made by New,
// handed to the presence server as its Forwarder.
type Proxy struct {
	opt      Options
	log      *slog.Logger
	tokens   *tokens
	binds    *bindings
	health   []targetHealth
	pbxAddrs atomic.Pointer[pbxAddrs] // the targets' addresses
	inUse    atomic.Int64             // forwarded transactions in flight
	started  chan struct{}

	invites    sync.Map                                      // inviteKey of an INVITE being forwarded → *inviteState
	inviteTxs  sync.Map                                      // our Via's branch of a forwarded INVITE → *inviteTx
	refusedLog atomic.Int64                                  // when a PBX's challenge of a dedicated call was last logged (Unix s)
	forgedLog  atomic.Int64                                  // when a token from a stranger was last logged (Unix s)
	forgot     []atomic.Bool                                 // per target: it was seen to forget a Path (logged once)
	served     map[presence.Package]bool                     // the event packages Lamplighter answers
	share      func(id string, data []byte, until time.Time) // set before Run (ShareFlows)

	// Set by Run, from the presence server.
	ctx      context.Context
	server   presence.ForwarderHost
	client   *sipgo.Client
	localIPs map[netip.Addr]bool // this machine's addresses, for wildcard listeners
}

// targetHealth is what the OPTIONS pings found last.
type targetHealth struct {
	checked atomic.Bool // at least one answer or failure yet
	up      atomic.Bool
	kick    chan struct{} // wakes the pings (the target went down)
}

var _ presence.Forwarder = (*Proxy)(nil)

// New makes a proxy for the targets.
func New(opt Options) (*Proxy, error) {
	opt.defaults()
	if len(opt.Targets) == 0 {
		return nil, errors.New("proxy: no targets")
	}
	if len(opt.Targets) > 255 {
		return nil, errors.New("proxy: more than 255 targets")
	}
	for i := range opt.Targets {
		opt.Targets[i].defaults()
		switch opt.Targets[i].Transport {
		case "UDP", "TCP", "TLS":
		default:
			return nil, fmt.Errorf("proxy: %s: unknown transport %q", opt.Targets[i].Name, opt.Targets[i].Transport)
		}
	}
	p := &Proxy{
		opt: opt, log: opt.Logger,
		tokens:  newTokens(opt.TokenKey),
		binds:   newBindings(opt.MaxBindings),
		health:  make([]targetHealth, len(opt.Targets)),
		forgot:  make([]atomic.Bool, len(opt.Targets)),
		started: make(chan struct{}),
	}
	p.pbxAddrs.Store(&pbxAddrs{sip: map[netip.AddrPort]int{}, ip: map[netip.Addr]int{}})
	for i := range p.health {
		p.health[i].kick = make(chan struct{}, 1)
	}
	p.served = map[presence.Package]bool{}
	for _, t := range presence.EventPackages() {
		p.served[t] = true
	}
	return p, nil
}

// Run starts forwarding through the presence server s (whose listeners
// are bound) and pings the targets until ctx ends.
func (p *Proxy) Run(ctx context.Context, s presence.ForwarderHost) error {
	client, err := sipgo.NewClient(s.UserAgent(), sipgo.WithClientLogger(p.log))
	if err != nil {
		return err
	}
	p.ctx, p.server, p.client = ctx, s, client
	p.localIPs = localIPs()
	p.resolveTargets(ctx)
	var keep string
	if p.opt.StateDir != "" {
		keep = filepath.Join(p.opt.StateDir, BindingsFile)
		p.loadBindings(keep)
		for _, t := range p.opt.Targets {
			for _, u := range p.binds.users(p.targetIndex(t.Name)) {
				p.observeRegistrations(p.targetIndex(t.Name), u)
			}
		}
	}
	close(p.started)
	var wg sync.WaitGroup
	for i := range p.opt.Targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.ping(ctx, i)
		}()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	resolved := time.Now()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			if keep != "" {
				p.saveBindings(keep)
			}
			return nil
		case now := <-t.C:
			for _, b := range p.binds.expire(now) {
				p.observeRegistrations(b.target, b.user)
			}
			if keep != "" {
				p.saveBindings(keep)
			}
			if now.Sub(resolved) >= time.Minute { // a PBX named by DNS may move
				p.resolveTargets(ctx)
				resolved = now
			}
		}
	}
}

// pbxAddrs are where the targets are: their SIP addresses (IP and port)
// by which a PBX's requests are told from phones', and their IPs alone.
type pbxAddrs struct {
	sip map[netip.AddrPort]int // a target's SIP address → its index
	ip  map[netip.Addr]int     // a target's IP address → its index
}

// resolveTargets learns the targets' IP addresses.
func (p *Proxy) resolveTargets(ctx context.Context) {
	a := &pbxAddrs{sip: map[netip.AddrPort]int{}, ip: map[netip.Addr]int{}}
	add := func(ip netip.Addr, i int) {
		a.ip[ip.Unmap()] = i
		a.sip[netip.AddrPortFrom(ip.Unmap(), uint16(p.opt.Targets[i].Port))] = i
	}
	for i, t := range p.opt.Targets {
		if ip, err := netip.ParseAddr(t.Host); err == nil {
			add(ip, i)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", t.Host)
		cancel()
		if err != nil {
			p.log.Warn("cannot resolve a PBX's SIP address", "pbx", t.Name, "host", t.Host, "err", err)
			continue
		}
		for _, ip := range addrs {
			add(ip, i)
		}
	}
	p.pbxAddrs.Store(a)
}

// fromPBX reports whether a request came from one of the targets: from
// its SIP address, IP and port. Asterisk and FreeSWITCH send over UDP
// from the port they listen on, and over TCP or TLS on the connection
// Lamplighter opened to that port; a phone on the PBX's own host (a
// softphone there, a phone behind the same NAT address) has another port
// and is a phone. A PBX's requests on a connection it opened itself (from
// another port) follow Lamplighter's tokens in their Route, and need no
// telling.
func (p *Proxy) fromPBX(addr netip.AddrPort) bool {
	_, ok := p.pbxAddrs.Load().sip[netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())]
	return ok
}

// targetOf is the index of the PBX a request from src came from: by its
// SIP address, else by its IP address (a connection the PBX opened), 0
// when it is none of them.
func (p *Proxy) targetOf(src flow) int {
	a := p.pbxAddrs.Load()
	if i, ok := a.sip[netip.AddrPortFrom(src.addr.Addr().Unmap(), src.addr.Port())]; ok {
		return i
	}
	return a.ip[src.addr.Addr().Unmap()]
}

// Health reports, per target name, whether it answered its last OPTIONS;
// a target not yet pinged is missing.
func (p *Proxy) Health() map[string]bool {
	out := make(map[string]bool, len(p.opt.Targets))
	for i, t := range p.opt.Targets {
		if p.health[i].checked.Load() {
			out[t.Name] = p.health[i].up.Load()
		}
	}
	return out
}

// Registration is a phone's registration that the PBX accepted through
// the proxy, as the API shows it.
type Registration struct {
	PBX string `json:"pbx"`
	// AOR is the address-of-record's user part (an extension), Domain
	// its domain (a tenant's, where there are tenants).
	AOR    string `json:"aor"`
	Domain string `json:"domain,omitempty"`
	// Contacts are the contact URIs the PBX holds for it (user@host:port).
	Contacts []string `json:"contacts"`
	// Transport and Flow are how the phone reached Lamplighter: the
	// address its packets came from, or its connection's remote end.
	Transport string    `json:"transport"`
	Flow      string    `json:"flow"`
	Expires   time.Time `json:"expires"`
}

// Registrations returns the registrations held through the proxy.
func (p *Proxy) Registrations() []Registration {
	list, _ := p.binds.live()
	out := make([]Registration, 0, len(list))
	for _, b := range list {
		out = append(out, Registration{PBX: p.opt.Targets[b.target].Name, AOR: b.user, Domain: b.domain, Contacts: b.contacts,
			Transport: b.flow.transport, Flow: b.flow.addr.String(), Expires: b.expires})
	}
	return out
}

// RegistrationCounts returns how many registrations each PBX in proxy
// mode holds through the proxy (zero included).
func (p *Proxy) RegistrationCounts() map[string]int {
	list, _ := p.binds.live()
	out := make(map[string]int, len(p.opt.Targets))
	for _, t := range p.opt.Targets {
		out[t.Name] = 0
	}
	for _, b := range list {
		out[p.opt.Targets[b.target].Name]++
	}
	return out
}

// Bindings returns how many registrations through the proxy are held.
func (p *Proxy) Bindings() int { return p.binds.len() }

// InFlight returns how many forwarded transactions are held (in flight,
// or kept for retransmissions).
func (p *Proxy) InFlight() int { return int(p.inUse.Load()) }

// ping sends OPTIONS to a target every HealthInterval while it answers,
// and every second while it does not, so that its phones' requests get
// 503 only while it is down: from its first unanswered OPTIONS (or a
// forwarded request's timeout, markDown) to its first answer. Any
// response at all (even 401 or 404) means it is up.
func (p *Proxy) ping(ctx context.Context, i int) {
	t := p.opt.Targets[i]
	h := &p.health[i]
	for {
		wait, timeout := p.opt.HealthInterval, min(2*time.Second, p.opt.HealthInterval)
		if h.checked.Load() && !h.up.Load() {
			wait, timeout = downPing, downPing
		}
		up := p.pingOnce(ctx, t, timeout)
		if ctx.Err() != nil {
			return
		}
		if up {
			p.markUp(i)
		} else {
			p.setHealth(i, false, "PBX does not answer SIP OPTIONS: its phones' requests get 503")
			wait = downPing
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-h.kick:
		}
	}
}

// downPing is how often a PBX that does not answer is asked again.
const downPing = time.Second

// setHealth records whether a target answers, logging a change.
func (p *Proxy) setHealth(i int, up bool, why string) {
	t := p.opt.Targets[i]
	h := &p.health[i]
	was, checked := h.up.Swap(up), h.checked.Swap(true)
	if was == up && checked {
		return
	}
	if up {
		p.log.Info("PBX answers SIP", "pbx", t.Name, "address", t.HostPort())
	} else {
		p.log.Warn(why, "pbx", t.Name, "address", t.HostPort())
	}
}

// markUp records a target's answer (to a ping or to anything forwarded).
func (p *Proxy) markUp(i int) { p.setHealth(i, true, "") }

// markDown records that a request forwarded to a target went unanswered
// (its transaction timed out): its phones' next requests get 503 at once,
// and it is asked every second from now on.
func (p *Proxy) markDown(i int) {
	p.setHealth(i, false, "PBX did not answer a forwarded request: its phones' requests get 503")
	select {
	case p.health[i].kick <- struct{}{}:
	default:
	}
}

func (p *Proxy) pingOnce(ctx context.Context, t Target, timeout time.Duration) bool {
	uri := sip.Uri{Scheme: "sip", Host: t.Host, Port: t.Port}
	req := sip.NewRequest(sip.OPTIONS, uri)
	req.SetTransport(t.Transport)
	req.SetDestination(t.HostPort())
	p.setLocal(req, t.Transport, t.Host)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := p.client.Do(ctx, req)
	if err != nil {
		p.log.Debug("PBX health OPTIONS failed", "pbx", t.Name, "err", err)
	}
	return err == nil && res != nil
}

// setLocal makes a request over UDP leave from our listener, so that
// answers come back to it and the next hop sees our port (over TCP and
// TLS sipgo reuses or dials the connection itself).
func (p *Proxy) setLocal(req *sip.Request, transport, host string) {
	peer, _ := netip.ParseAddr(host)
	if transport == "UDP" {
		if l, ok := p.server.BoundAddr("UDP", peer); ok {
			req.Laddr = sip.Addr{IP: net.IP(l.Addr().AsSlice()), Port: int(l.Port())}
		}
	}
}

// Forwards reports whether a request of a method the presence server
// answers itself is for the PBX instead: a request with a Route of ours
// (in a dialog the proxy record-routed, or for a phone through its
// Path), any request from a PBX, a REGISTER of a proxied phone, and
// SUBSCRIBE or PUBLISH for packages Lamplighter does not serve.
func (p *Proxy) Forwards(req *sipmsg.Request) bool {
	if req.Method == "CANCEL" {
		return false // Cancel takes it
	}
	if p.fromPBX(req.Peer) || p.routedByUs(req) {
		return true
	}
	switch req.Method {
	case "REGISTER":
		t := p.targetFor(req.To.URI.User, req.To.URI.Host)
		return t >= 0 && !p.opt.Targets[t].Dedicated
	case "SUBSCRIBE":
		return !p.served[eventToken(req)]
	case "PUBLISH":
		return eventToken(req) != presence.PackagePresence
	}
	return false
}

// eventToken is a request's event package.
func eventToken(req *sipmsg.Request) presence.Package {
	ev, _ := req.Get(sipmsg.Event)
	pkg, _, _ := strings.Cut(ev, ";")
	return presence.Package(strings.ToLower(strings.TrimSpace(pkg)))
}

// isUs reports whether a URI names one of our listeners: its host is a
// listener's address (or, for a wildcard listener, an address of this
// machine) and its port the listener's (5060 when it has none).
func (p *Proxy) isUs(u sip.Uri) bool {
	ip, err := netip.ParseAddr(strings.Trim(u.Host, "[]"))
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	port := u.Port
	if port == 0 {
		port = 5060
	}
	for _, a := range p.server.Addrs() {
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil || int(ap.Port()) != port {
			continue
		}
		bound := ap.Addr().Unmap()
		if bound == ip || bound.IsUnspecified() && p.localIPs[ip] {
			return true
		}
	}
	return false
}

// routedByUs reports whether a request's topmost Route carries one of our
// tokens.
func (p *Proxy) routedByUs(req *sipmsg.Request) bool {
	v, ok := req.Get(sipmsg.Route)
	if !ok {
		return false
	}
	for r := range sipmsg.SplitList(v) {
		a, err := sipmsg.ParseAddress(r)
		if err != nil {
			return false
		}
		_, _, ours := p.tokens.read(a.URI.User)
		return ours
	}
	return false
}

// FlowUser returns the address-of-record (user part and domain) a
// request's flow was registered as through the proxy, when the request's
// From names that user; ok is false otherwise, and always with
// RequireDigest.
func (p *Proxy) FlowUser(req *sipmsg.Request) (user, domain string, ok bool) {
	if p.opt.RequireDigest {
		return "", "", false
	}
	b, ok := p.binds.onFlow(flow{transport: req.Transport, addr: req.Peer})
	if !ok || !strings.EqualFold(b.user, req.From.URI.User) {
		return "", "", false
	}
	return b.user, b.domain, true
}

// targetFor returns the index of the proxied PBX of a user part in a
// domain, -1 for none.
func (p *Proxy) targetFor(user, domain string) int {
	if p.opt.TargetFor == nil {
		return 0
	}
	name := p.opt.TargetFor(user, domain)
	if name == "" {
		return -1
	}
	for i, t := range p.opt.Targets {
		if t.Name == name {
			return i
		}
	}
	return -1
}

// localIPs returns this machine's interface addresses.
func localIPs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil {
			out[pfx.Addr().Unmap()] = true
		}
	}
	return out
}

// Cancel implements presence.Forwarder: a CANCEL matches the INVITE with
// the same top Via (branch and sent-by, RFC 3261 §9.2) being forwarded.
// One that matches none (the INVITE went before Lamplighter restarted) is
// forwarded statelessly (§16.10) to where its INVITE went: with our Via
// of the same branch (branch is an HMAC of what the two share, under the
// key kept across restarts), so that the next hop finds the INVITE.
func (p *Proxy) Cancel(req *sipmsg.Request) presence.CancelResult {
	v, err := req.TopVia()
	if err != nil {
		return presence.CancelUnknown
	}
	if st, ok := p.invites.Load(inviteKey(v.Branch(), v.Host, v.Port)); ok {
		st.(*inviteState).cancel()
		return presence.CancelMatched
	}
	select {
	case <-p.started:
	default:
		return presence.CancelUnknown
	}
	c, err := toSIP(req)
	if err != nil {
		return presence.CancelUnknown
	}
	if code, _ := p.validate(c); code != 0 {
		return presence.CancelUnknown
	}
	fwd, h, code, _ := p.prepare(c)
	if code != 0 {
		return presence.CancelUnknown
	}
	if err := p.client.WriteRequest(fwd, noBuild); err != nil {
		p.log.Debug("cannot forward a CANCEL", "to", h.dest, "err", err)
		return presence.CancelUnknown
	}
	p.opt.Metrics.Forwarded("CANCEL")
	p.log.Debug("forwarded a CANCEL that matched no INVITE statelessly", "call_id", req.CallID, "to", h.dest)
	return presence.CancelForwarded
}

// toSIP makes a sipgo request of one the presence server read.
func toSIP(req *sipmsg.Request) (*sip.Request, error) {
	var b strings.Builder
	b.WriteString(req.Method + " " + req.URI.Raw + " SIP/2.0\r\n")
	for _, f := range req.Fields {
		if strings.EqualFold(f.Name, "Content-Length") || strings.EqualFold(f.Name, "l") {
			continue
		}
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	b.WriteString("Content-Length: " + strconv.Itoa(len(req.Body)) + "\r\n\r\n")
	b.Write(req.Body)
	msg, err := sip.ParseMessage([]byte(b.String()))
	if err != nil {
		return nil, err
	}
	r, ok := msg.(*sip.Request)
	if !ok {
		return nil, errors.New("not a request")
	}
	r.SetSource(req.Source)
	r.SetTransport(req.Transport)
	return r, nil
}

// inviteKey matches a CANCEL to its INVITE.
func inviteKey(branch, host string, port int) string {
	return branch + "|" + strings.ToLower(strings.Trim(host, "[]")) + ":" + strconv.Itoa(port)
}

// HoldsFlow implements presence.Forwarder: a flow with a live
// registration through the proxy.
func (p *Proxy) HoldsFlow(transport string, peer netip.AddrPort) bool {
	_, ok := p.binds.onFlow(flow{transport: transport, addr: peer})
	return ok
}

// TokenKey returns the key the proxy's tokens are minted under.
func (p *Proxy) TokenKey() []byte { return bytes.Clone(p.tokens.key()[:]) }

// SetTokenKey mints tokens under key (32 bytes) from now on: a node of a
// cluster takes the key the cluster shares, so that a Path or
// Record-Route another node wrote routes here too. Tokens under the key
// it replaces are still read. It reports whether the key changed.
func (p *Proxy) SetTokenKey(key []byte) bool { return p.tokens.setKey(key) }
