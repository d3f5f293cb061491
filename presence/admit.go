package presence

import (
	"net/netip"
	"time"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Admission: every request of a method the server answers itself
// (SUBSCRIBE, PUBLISH, REGISTER, OPTIONS) passes the same checks in the
// same order, decided here, whatever transport brought it. The
// transports only frame messages, keep UDP's server transactions, and
// carry each verdict out on their own connection:
//
//  1. admitSource, once a whole message is in: the per-address rate;
//     over it the request is dropped unanswered.
//  2. reading (sipmsg): what cannot be read is answered from its bytes,
//     with readFailure's code.
//  3. admit: a request the Forwarder takes goes on to it (proxy mode);
//     one sure to be challenged gets its 401 at once and is kept
//     nowhere; anything else is run.
//  4. overloaded, just before a request is run (over UDP after the
//     retransmission check, so that a request at work is not refused
//     when its retransmission comes): 503 with Retry-After.
//
// UDP: udpread.go (onDatagram) and udptx.go (serveDatagram); TCP and
// TLS: stream.go (guardedConn.serve).

// verdict is what admit decided for a request.
type verdict uint8

const (
	admitRun       verdict = iota // run by its handler
	admitForward                  // the Forwarder's
	admitChallenge                // 401 at once, stateless
)

// admit decides what becomes of a request read from any transport
// (its Transport, Peer and Source set).
func (s *Server) admit(req *sipmsg.Request) verdict {
	switch {
	case s.forwards(req):
		return admitForward
	case s.mustChallenge(req):
		return admitChallenge
	}
	return admitRun
}

// readFailure is the answer to a request sipmsg could not read.
func readFailure(err error) (int, string) {
	if e, ok := err.(*sipmsg.Error); ok {
		return e.Code, e.Reason
	}
	return 400, "Bad Request"
}

// admitSource applies the per-address request limit (Options.
// RequestsPerAddress) to a request from ip, whatever its transport; it
// reports whether the request may go on. One over the limit is dropped
// unanswered.
func (s *Server) admitSource(ip netip.Addr) bool {
	if s.limiter == nil || s.auth.isTrustedIP(ip) {
		return true
	}
	ok, warn := s.limiter.allow(ip, time.Now())
	if !ok {
		s.opt.Metrics.RequestDropped("rate_limit")
		if warn {
			s.log.Warn("requests from one address over the limit: dropping them", "source", ip.String(),
				"limit_per_second", s.opt.RequestsPerAddress)
		}
	}
	return ok
}

// mustChallenge reports whether req is sure to get 401: a SUBSCRIBE,
// PUBLISH or REGISTER from an untrusted address that opens no dialog and
// carries no credentials (a refresh's dialog identifiers are its
// credential).
func (s *Server) mustChallenge(req *sipmsg.Request) bool {
	switch req.Method {
	case "SUBSCRIBE", "PUBLISH", "REGISTER":
	default:
		return false
	}
	return !s.auth.isTrustedIP(req.Peer.Addr()) && req.To.Tag() == "" &&
		!req.Has(sipmsg.Authorization) && !req.Has(sipmsg.ProxyAuthorization) &&
		(s.opt.Forwarder == nil || s.flowUser(req) == "")
}
