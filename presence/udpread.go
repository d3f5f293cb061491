package presence

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
)

// Each UDP listener is read by Lamplighter's own readers, several at once,
// so that reading keeps up with a burst however busy the workers are
// (one reader among many busy goroutines got too little of the CPU and
// the kernel dropped what it could not queue). What Lamplighter does not
// take itself (other methods) goes on to sipgo through sipgoConn, which
// sipgo serves as if it were the socket.

// udpReaders is how many goroutines read each UDP listener: two, and one
// more for every two cores past four, up to eight.
func udpReaders() int { return min(8, max(2, runtime.GOMAXPROCS(0)/2)) }

// packet is a datagram passed on to sipgo.
type packet struct {
	data []byte
	from *net.UDPAddr
}

// sipgoConn is the UDP listener as sipgo sees it: it reads what our
// readers pass on and writes to the socket itself.
type sipgoConn struct {
	*net.UDPConn
	in        chan packet
	done      chan struct{}
	closeOnce sync.Once
}

func newSipgoConn(c *net.UDPConn) *sipgoConn {
	return &sipgoConn{UDPConn: c, in: make(chan packet, 256), done: make(chan struct{})}
}

// ReadFrom returns the next datagram passed on.
func (c *sipgoConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case pk := <-c.in:
		return copy(p, pk.data), pk.from, nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

// Close ends sipgo's reading and closes the socket.
func (c *sipgoConn) Close() error {
	c.closeOnce.Do(func() { close(c.done) })
	return c.UDPConn.Close()
}

// pass hands a datagram to sipgo; when sipgo is that far behind (it only
// gets what Lamplighter does not serve) the datagram is dropped, as the
// kernel would.
func (c *sipgoConn) pass(data []byte, from netip.AddrPort) {
	select {
	case c.in <- packet{data: bytes.Clone(data), from: net.UDPAddrFromAddrPort(from)}:
	default:
	}
}

// readUDP reads datagrams from a listener until it is closed.
func (s *Server) readUDP(sc *sipgoConn) {
	buf := make([]byte, maxUDPRead)
	for {
		n, from, err := sc.UDPConn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP errors and the like
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if s.onDatagram(sc.UDPConn, from, buf[:n]) {
			sc.pass(buf[:n], from)
		}
	}
}

// maxUDPRead is the read buffer: room for any datagram.
const maxUDPRead = 65535 + 1

// maxRequestDatagram bounds a request over UDP (413 past it): what a
// request queued for the workers may hold (see maxQueuedBytes), and the
// most sipgo's own reader took.
const maxRequestDatagram = 32 << 10
