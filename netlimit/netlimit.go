// Package netlimit bounds the connections a listener holds, in total and
// per remote address, and keeps a listener accepting through errors that
// would otherwise end it (running out of file descriptors). The SIP
// listeners for TCP and TLS and the HTTP listener use it.
package netlimit

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Reasons a connection is refused.
const (
	ReasonTotal      = "max_connections"
	ReasonPerAddress = "max_per_address"
)

// Listener wraps a net.Listener. Accept closes, at once, a connection
// past Max in total or past PerAddress from its address, and retries an
// accept error with backoff up to a second instead of returning it. The
// connections it returns give their place back when closed.
type Listener struct {
	net.Listener
	// Max and PerAddress bound the open connections (0: no bound).
	Max, PerAddress int
	// OnRefuse is told why each refused connection was (may be nil).
	OnRefuse func(reason string, remote net.Addr)
	// OnAcceptError is told of each accept error before the retry (may
	// be nil).
	OnAcceptError func(err error)

	mu      sync.Mutex
	total   int
	perIP   map[netip.Addr]int
	done    chan struct{}
	once    sync.Once
	failing atomic.Bool
}

// New wraps ln.
func New(ln net.Listener, max, perAddress int) *Listener {
	return &Listener{Listener: ln, Max: max, PerAddress: perAddress, perIP: map[netip.Addr]int{}, done: make(chan struct{})}
}

// Accept returns the next admitted connection; it fails only once the
// listener is closed.
func (l *Listener) Accept() (net.Conn, error) {
	wait := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.done:
				return nil, net.ErrClosed
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			l.failing.Store(true)
			if l.OnAcceptError != nil {
				l.OnAcceptError(err)
			}
			select {
			case <-time.After(wait):
			case <-l.done:
				return nil, net.ErrClosed
			}
			wait = min(2*wait, time.Second)
			continue
		}
		l.failing.Store(false)
		wait = 5 * time.Millisecond
		ip := RemoteIP(c.RemoteAddr())
		if reason := l.admit(ip); reason != "" {
			c.Close()
			if l.OnRefuse != nil {
				l.OnRefuse(reason, c.RemoteAddr())
			}
			continue
		}
		return &conn{Conn: c, l: l, ip: ip}, nil
	}
}

// Failing reports whether the last accept failed (and is being retried).
func (l *Listener) Failing() bool { return l.failing.Load() }

// Open returns the number of connections held.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Close stops accepting.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func (l *Listener) admit(ip netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.Max > 0 && l.total >= l.Max:
		return ReasonTotal
	case l.PerAddress > 0 && l.perIP[ip] >= l.PerAddress:
		return ReasonPerAddress
	}
	l.total++
	l.perIP[ip]++
	return ""
}

func (l *Listener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

// conn gives its place back when closed.
type conn struct {
	net.Conn
	l    *Listener
	ip   netip.Addr
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

// RemoteIP is a connection's remote address without its port, IPv4-mapped
// addresses as IPv4.
func RemoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}
