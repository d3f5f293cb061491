package netlimit

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// failing fails Accept a number of times before handing out connections,
// as a listener does when the process runs out of file descriptors.
type failing struct {
	net.Listener
	fails atomic.Int32
}

func (f *failing) Accept() (net.Conn, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, errors.New("accept4: too many open files")
	}
	return f.Listener.Accept()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestAcceptErrorsAreRetried: accept errors never end the listener, and
// it says so while they last.
func TestAcceptErrorsAreRetried(t *testing.T) {
	raw := listen(t)
	fl := &failing{Listener: raw}
	fl.fails.Store(5)
	l := New(fl, 0, 0)
	errs := 0
	l.OnAcceptError = func(error) { errs++ }
	go net.Dial("tcp", raw.Addr().String())
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("accept gave up: %v", err)
	}
	c.Close()
	if errs != 5 || l.Failing() {
		t.Errorf("%d errors seen, failing %v", errs, l.Failing())
	}
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept after close: %v", err)
	}
}

// TestCaps: past the per-address cap a connection is closed at once and
// counted; closing one makes room.
func TestCaps(t *testing.T) {
	l := New(listen(t), 3, 2)
	defer l.Close()
	refused := make(chan string, 10)
	l.OnRefuse = func(reason string, _ net.Addr) { refused <- reason }
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var held []net.Conn
	for range 2 {
		dial("127.0.0.1")
		held = append(held, <-accepted)
	}
	over := dial("127.0.0.1")
	if r := <-refused; r != ReasonPerAddress {
		t.Errorf("refused for %s", r)
	}
	over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := over.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("refused connection not closed: %v", err)
	}
	dial("127.0.0.2")
	held = append(held, <-accepted)
	dial("127.0.0.3")
	if r := <-refused; r != ReasonTotal {
		t.Errorf("refused for %s", r)
	}
	held[0].Close()
	if l.Open() != 2 {
		t.Errorf("%d open after one closed", l.Open())
	}
	dial("127.0.0.1")
	<-accepted
}
