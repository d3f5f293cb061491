package presence

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Forwarder passes on what the server does not answer itself: proxy
// mode, where phones use Lamplighter as their outbound proxy and every
// request but presence goes on to their PBX (package presence/proxy).
// Without one, other methods get 405.
type Forwarder interface {
	// Forwards reports whether a request of a method the server answers
	// itself goes on instead (a phone's REGISTER for its PBX, a
	// SUBSCRIBE for a package served elsewhere); it runs before any
	// authentication, on every such request.
	Forwards(req *sipmsg.Request) bool
	// FlowUser returns the address-of-record (user part and domain) a
	// request's flow was registered as through the forwarder, when the
	// request is from that user: it then needs no digest.
	FlowUser(req *sipmsg.Request) (user, domain string, ok bool)
	// Serve forwards a request sipgo read, in its server transaction,
	// returning when the transaction is over.
	Serve(req *sip.Request, tx sip.ServerTransaction)
	// Cancel cancels the forwarded INVITE a CANCEL matches (RFC 3261
	// §16.10): the server answers such a CANCEL 200 itself, and the
	// INVITE ends with what the next hop answers, so that a 200 that
	// crosses the CANCEL still reaches the caller. One that matches no
	// INVITE (Lamplighter restarted while it rang) is forwarded
	// statelessly where it can be, and the next hop answers it; else the
	// server answers 481.
	Cancel(req *sipmsg.Request) CancelResult
	// Response takes a response that matched none of sipgo's
	// transactions, reporting whether it was the forwarder's (its own
	// transactions', or one it forwarded statelessly).
	Response(res *sip.Response) bool
	// Run forwards once the server's listeners are bound, until ctx
	// ends.
	Run(ctx context.Context, h ForwarderHost) error
	// HoldsFlow reports whether a flow (transport and the peer's
	// address) carries a registration through the forwarder: the PBX
	// reaches the phone on it, so an idle connection must stay.
	HoldsFlow(transport string, peer netip.AddrPort) bool
}

// ForwarderHost is what a Forwarder may use of the server it runs
// beside: its SIP stack and addresses, stateless sends, and the
// authentication of calls on dedicated busy-lamp lines. *Server is one.
type ForwarderHost interface {
	UserAgent() *sipgo.UserAgent
	Addrs() []net.Addr
	Advertised(transport string, peer netip.Addr) netip.AddrPort
	BoundAddr(transport string, peer netip.Addr) (netip.AddrPort, bool)
	SendStateless(msg sip.Message, transport string, dst netip.AddrPort) error
	AuthenticateCall(req *sip.Request) (*bridge.User, []string, error)
}

var _ ForwarderHost = (*Server)(nil)

// CancelResult says what became of a CANCEL the Forwarder was given.
type CancelResult int

// What a CANCEL came to.
const (
	CancelUnknown   CancelResult = iota // it matches nothing: 481
	CancelMatched                       // it matched a forwarded INVITE: 200 here
	CancelForwarded                     // forwarded statelessly: the next hop answers
)

// streamNeeded reports whether an idle stream connection must stay open:
// it carries subscriptions, or (proxy mode) a phone's registration.
func (s *Server) streamNeeded(transport, remote string) bool {
	if s.subs.holdsStream(remote) {
		return true
	}
	return s.opt.Forwarder != nil && s.opt.Forwarder.HoldsFlow(transport, parseAddrPort(remote))
}

// UserAgent is the sipgo user agent the server's listeners belong to: a
// client made on it sends from them.
func (s *Server) UserAgent() *sipgo.UserAgent { return s.ua }

// Advertised is the address the server puts in Via, Contact,
// Record-Route or Path for a peer over a transport ("UDP", "TCP",
// "TLS"): the listener's own, or where it is a wildcard, the local
// address the routing table picks for the peer.
func (s *Server) Advertised(transport string, peer netip.Addr) netip.AddrPort {
	p := ""
	if peer.IsValid() {
		p = netip.AddrPortFrom(peer, 5060).String()
	}
	host, port := s.localAddr(strings.ToUpper(transport), p)
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port))
	}
	return netip.AddrPortFrom(ip, uint16(port))
}

// BoundAddr is the bound address of the listener for a transport that
// suits a peer's address family (as sipgo names that listener).
func (s *Server) BoundAddr(transport string, peer netip.Addr) (netip.AddrPort, bool) {
	s.addrsMu.Lock()
	defer s.addrsMu.Unlock()
	for i, l := range s.opt.Listen {
		if !strings.EqualFold(l.Transport, transport) || i >= len(s.addrs) {
			continue
		}
		ap, err := netip.ParseAddrPort(s.addrs[i].String())
		if err != nil {
			continue
		}
		if peer.IsValid() && peer.Unmap().Is4() != ap.Addr().Unmap().Is4() {
			continue // 0.0.0.0 serves IPv4 peers, [::] IPv6 ones
		}
		return ap, true
	}
	return netip.AddrPort{}, false
}

// forwards reports whether a request read on our own path goes to the
// Forwarder instead.
func (s *Server) forwards(req *sipmsg.Request) bool {
	return s.opt.Forwarder != nil && s.opt.Forwarder.Forwards(req)
}

// handleCancel answers a CANCEL in proxy mode (sipgo would answer the
// INVITE 487 at once, before the next hop has said whether it was
// answered meanwhile).
func (s *Server) handleCancel(req *sipmsg.Request, tx serverTx) {
	switch s.opt.Forwarder.Cancel(req) {
	case CancelMatched:
		s.reply(req, tx, 200, "OK")
	case CancelForwarded:
		tx.done() // the next hop's 200 comes back through the forwarder
	default:
		s.reply(req, tx, 481, "Call/Transaction Does Not Exist")
	}
}

// SendStateless writes a message to dst with no transaction: over UDP
// from the listener of dst's address family, over TCP or TLS on a
// connection to dst that is open (Lamplighter opens none for it).
func (s *Server) SendStateless(msg sip.Message, transport string, dst netip.AddrPort) error {
	if strings.EqualFold(transport, "UDP") {
		c := s.udpListenerFor(dst.Addr())
		if c == nil {
			return errors.New("no UDP listener for " + dst.String())
		}
		_, err := c.WriteToUDPAddrPort([]byte(msg.String()), dst)
		return err
	}
	c, err := s.ua.TransportLayer().GetConnection(strings.ToLower(transport), dst.String())
	if err != nil {
		return err
	}
	if c == nil {
		return errors.New("no connection to " + dst.String())
	}
	defer c.TryClose()
	return c.WriteMsg(msg)
}

// handleOther answers a request of a method the server does not serve:
// forwarded in proxy mode, else 405.
func (s *Server) handleOther(req *sip.Request, tx sip.ServerTransaction) {
	if s.opt.Forwarder != nil {
		s.opt.Forwarder.Serve(req, tx)
		return
	}
	s.handleUnknown(req, tx)
}

// flowUser finds the directory user a request's registered flow stands
// for (proxy mode), "" for none.
func (s *Server) flowUser(req *sipmsg.Request) string {
	if s.opt.Forwarder == nil {
		return ""
	}
	name, domain, ok := s.opt.Forwarder.FlowUser(req)
	if !ok {
		return ""
	}
	// The user the flow registered as, in the domain it registered in
	// (its tenant, where there are tenants): whom it may watch is then
	// its tenant's to say (tenant.go).
	if u, ok := s.states.Directory().Resolve(domain, name); ok {
		return u.ID
	}
	return ""
}

// grantFlow is the grant of a subscription let in by its registered
// flow: it holds while its watcher is a user in the directory (the PBX
// decides who registers).
const grantFlow = "flow"

// AuthenticateCall checks a call placed on a dedicated busy-lamp line
// (proxy mode with dedicated lines) with the caller's SIP credentials, as
// SUBSCRIBE is checked: Proxy-Authorization (or Authorization), or a
// trusted network. It returns the directory user who called; with none,
// the challenges to answer 407 with (Proxy-Authenticate values), or
// neither when the caller authenticated as no user of the directory (403).
func (s *Server) AuthenticateCall(req *sip.Request) (*bridge.User, []string, error) {
	m, err := sipmsg.ParseString(req.String())
	if err != nil {
		return nil, nil, err
	}
	m.Transport, m.Source = strings.ToUpper(req.Transport()), req.Source()
	m.Peer = parseAddrPort(req.Source())
	id, out := s.auth.check(m)
	dir := s.states.Directory()
	switch out {
	case authOK:
		if u, ok := dir.User(id.UserID); ok && id.UserID != "" {
			return u, nil, nil
		}
		if u, ok := dir.Resolve(m.From.URI.Host, m.From.URI.User); ok && id.Trusted {
			return u, nil, nil
		}
		return nil, nil, nil
	case authFailed:
		s.opt.Metrics.AuthFailure(methodLabel(m.Method))
		s.log.Info("authentication failed", "method", m.Method, "source", m.Source)
	case authReplay:
		s.opt.Metrics.AuthFailure(methodLabel(m.Method))
		s.log.Info("digest replay refused: a nonce count used before", "method", m.Method, "source", m.Source)
	}
	return nil, s.auth.challenges(m, out == authStale), nil
}
