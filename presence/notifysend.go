package presence

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence/internal/notifytx"
)

// Where a NOTIFY goes and how it gets there; its transaction is run by
// notifytx.

// notifyTx is one NOTIFY transaction, for a subscription.
type notifyTx = notifytx.Tx[*Subscription]

// address picks where a NOTIFY goes: the first route of the route set,
// else back to the address the SUBSCRIBE came from (so NAT works), on the
// subscriber's own connection for TCP/TLS while it is open, else to the
// remote target. Called with sub.mu held.
func (s *Server) address(sub *Subscription) (network, addr string) {
	network = strings.ToLower(sub.Transport)
	switch {
	case sub.routeAddr != "":
		return network, sub.routeAddr
	case network == "udp":
		return network, sub.Source
	}
	if c, err := s.ua.TransportLayer().GetConnection(network, sub.Source); err == nil && c != nil {
		c.TryClose() // GetConnection took a reference: only a look
		return network, sub.Source
	}
	return network, sub.targetAddr
}

// connect readies tx to go to addr over network: the UDP listener of the
// address's family, or a stream connection (the subscriber's, or a new
// one).
func (s *Server) connect(ctx context.Context, tx *notifyTx, network, addr string, h hop) error {
	if network == "udp" {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			ua, rerr := net.ResolveUDPAddr("udp", addr)
			if rerr != nil {
				return rerr
			}
			ap = ua.AddrPort()
		}
		to := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		conn := s.udpListenerFor(to.Addr())
		if conn == nil {
			return fmt.Errorf("no UDP listener to reach %s", addr)
		}
		tx.ToUDP(conn, to)
		return nil
	}
	host, port, err := sip.ParseAddr(addr)
	if err != nil {
		return err
	}
	req := sip.NewRequest(sip.NOTIFY, sip.Uri{Scheme: "sip", Host: host, Port: port})
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: h.Transport,
		Host: h.Host, Port: h.Port, Params: sip.NewParams()}
	via.Params.Add("branch", tx.Branch)
	req.AppendHeader(via)
	req.SetTransport(h.Transport)
	req.SetDestination(addr)
	// A connection that must be opened gets a few seconds: a NOTIFY
	// worker waits on it.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := s.ua.TransportLayer().ClientRequestConnection(ctx, req)
	if err != nil {
		return err
	}
	tx.ToStream(c, req)
	return nil
}

// udpListenerFor returns the UDP listener for sending to ip: one bound to
// its address family, else a wildcard one.
func (s *Server) udpListenerFor(ip netip.Addr) *net.UDPConn {
	var wildcard *net.UDPConn
	for _, c := range s.udpConns {
		la := c.LocalAddr().(*net.UDPAddr)
		lip, _ := netip.AddrFromSlice(la.IP)
		lip = lip.Unmap()
		switch {
		case lip.IsUnspecified() && (lip.Is6() || ip.Is4()):
			if wildcard == nil {
				wildcard = c
			}
		case lip.Is4() == ip.Is4():
			return c
		}
	}
	return wildcard
}
