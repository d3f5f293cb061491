// Package esltest is a double of FreeSWITCH's inbound event socket on
// loopback TCP, for the ESL adapter's tests and the load tool. It speaks
// what FreeSWITCH 1.10 writes: auth/request, command/reply, api/response
// and text/event-plain frames with Content-Length framing.
package esltest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is the event socket double. The zero value is not usable; call
// Listen.
type Server struct {
	ln       net.Listener
	password string

	mu            sync.Mutex
	channels      []byte // body of `show channels as json`
	registrations []byte // body of `show registrations as json`
	seq           uint64 // highest Event-Sequence sent
	current       *Conn
	conns         map[*Conn]struct{}
	silent        bool
	subscribed    []string // the last event command's words
	closed        bool
	dumps         map[string][]byte // uuid → body of `uuid_dump <uuid> json`
	users         []byte            // body of `list_users`

	loggedIn chan *Conn
}

// Conn is one client connection to the double.
type Conn struct {
	c  net.Conn
	mu sync.Mutex
}

// Write writes raw bytes to the client, whole.
func (c *Conn) Write(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.c.Write(b)
	return err
}

// Close drops the connection, as a FreeSWITCH that goes away.
func (c *Conn) Close() error { return c.c.Close() }

// Listen starts a double on addr (host:port; port 0 picks one) that
// accepts password.
func Listen(addr, password string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, password: password,
		channels:      []byte(`{"row_count":0}`),
		registrations: []byte(`{"row_count":0}`),
		conns:         map[*Conn]struct{}{},
		loggedIn:      make(chan *Conn, 16)}
	go s.serve()
	return s, nil
}

// Addr is the address the double listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops listening and drops every connection.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	return s.ln.Close()
}

// CloseListener stops accepting connections but keeps those open.
func (s *Server) CloseListener() error { return s.ln.Close() }

// SetChannels sets the answer to `api show channels as json`.
func (s *Server) SetChannels(body []byte) { s.mu.Lock(); s.channels = body; s.mu.Unlock() }

// SetDump sets the answer to `api uuid_dump <uuid> json` (a leg's
// variables); a uuid without one is answered as FreeSWITCH answers for a
// leg that is gone.
func (s *Server) SetDump(uuid string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dumps == nil {
		s.dumps = map[string][]byte{}
	}
	s.dumps[uuid] = body
}

// SetUsers sets the answer to `api list_users` (the directory).
func (s *Server) SetUsers(body []byte) { s.mu.Lock(); s.users = body; s.mu.Unlock() }

// SetRegistrations sets the answer to `api show registrations as json`.
func (s *Server) SetRegistrations(body []byte) { s.mu.Lock(); s.registrations = body; s.mu.Unlock() }

// Subscribed returns the words of the last `event` command (the format
// first, then the events and subclasses asked for).
func (s *Server) Subscribed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.subscribed...)
}

// SetSilent makes the double read commands and answer none, as a wedged
// FreeSWITCH does.
func (s *Server) SetSilent(v bool) { s.mu.Lock(); s.silent = v; s.mu.Unlock() }

// WaitLogin waits up to d for a client to log in.
func (s *Server) WaitLogin(d time.Duration) (*Conn, error) {
	select {
	case c := <-s.loggedIn:
		return c, nil
	case <-time.After(d):
		return nil, fmt.Errorf("no client logged in within %v", d)
	}
}

// SawSequence raises the double's event sequence to n, for recorded
// frames written with Conn.Write.
func (s *Server) SawSequence(n uint64) {
	s.mu.Lock()
	s.seq = max(s.seq, n)
	s.mu.Unlock()
}

// ErrNoClient is returned by Send when no client is logged in.
var ErrNoClient = errors.New("esltest: no client logged in")

// Send writes one text/event-plain event to the client that logged in
// last. headers are name, value pairs in order; values are URL-encoded as
// FreeSWITCH does, and Event-Sequence is added.
func (s *Server) Send(headers ...string) error {
	s.mu.Lock()
	s.seq++
	seq := s.seq
	c := s.current
	s.mu.Unlock()
	if c == nil {
		return ErrNoClient
	}
	return c.Write(AppendEvent(nil, seq, headers...))
}

// AppendEvent appends a text/event-plain frame with the given headers
// (name, value pairs) and Event-Sequence seq.
func AppendEvent(dst []byte, seq uint64, headers ...string) []byte {
	body := make([]byte, 0, 64*len(headers))
	for i := 0; i+1 < len(headers); i += 2 {
		body = append(body, headers[i]...)
		body = append(body, ": "...)
		body = append(body, url.PathEscape(headers[i+1])...)
		body = append(body, '\n')
	}
	body = append(body, "Event-Sequence: "...)
	body = strconv.AppendUint(body, seq, 10)
	body = append(body, "\n\n"...)
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\nContent-Type: text/event-plain\n\n"...)
	return append(dst, body...)
}

func (s *Server) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		fc := &Conn{c: c}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[fc] = struct{}{}
		s.mu.Unlock()
		go s.handle(fc)
	}
}

// handle speaks the event socket protocol to one client.
func (s *Server) handle(fc *Conn) {
	defer func() {
		fc.c.Close()
		s.mu.Lock()
		delete(s.conns, fc)
		if s.current == fc {
			s.current = nil
		}
		s.mu.Unlock()
	}()
	r := bufio.NewReader(fc.c)
	fc.Write([]byte("Content-Type: auth/request\n\n"))
	authed := false
	for {
		cmd, headers, err := readCommand(r)
		if err != nil {
			return
		}
		s.mu.Lock()
		silent := s.silent
		s.mu.Unlock()
		if silent {
			continue
		}
		reply := func(text string) { fc.Write([]byte("Content-Type: command/reply\nReply-Text: " + text + "\n\n")) }
		api := func(body []byte) {
			fc.Write(fmt.Appendf(nil, "Content-Type: api/response\nContent-Length: %d\n\n%s", len(body), body))
		}
		verb, args, _ := strings.Cut(cmd, " ")
		switch {
		case !authed && verb == "auth":
			if args != s.password {
				reply("-ERR invalid")
				fc.Write([]byte("Content-Type: text/disconnect-notice\nContent-Length: 67\n\nDisconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"))
				return
			}
			authed = true
			reply("+OK accepted")
			s.mu.Lock()
			if s.current == nil {
				s.current = fc
			}
			s.mu.Unlock()
			select {
			case s.loggedIn <- fc:
			default:
			}
		case !authed:
			reply("-ERR command not found")
		case verb == "event":
			s.mu.Lock()
			s.subscribed = strings.Fields(args)
			s.current = fc // events go to the connection that asked for them, not to a one-command one
			s.mu.Unlock()
			reply("+OK event listener enabled plain")
		case verb == "sendevent":
			reply("+OK 4d5f7c52-0e0c-4b8e-9d5a-1f3e0c2b9a11")
			pairs := []string{"Event-Name", args}
			for k, vs := range headers {
				pairs = append(pairs, k, vs[0])
			}
			s.mu.Lock()
			s.seq++
			seq := s.seq
			s.mu.Unlock()
			fc.Write(AppendEvent(nil, seq, pairs...))
		case cmd == "api show channels as json":
			s.mu.Lock()
			b := s.channels
			s.mu.Unlock()
			api(b)
		case cmd == "api show registrations as json":
			s.mu.Lock()
			b := s.registrations
			s.mu.Unlock()
			api(b)
		case strings.HasPrefix(cmd, "api uuid_dump ") && strings.HasSuffix(cmd, " json"):
			uuid := strings.TrimSuffix(strings.TrimPrefix(cmd, "api uuid_dump "), " json")
			s.mu.Lock()
			b, ok := s.dumps[uuid]
			s.mu.Unlock()
			if !ok {
				b = []byte("-ERR No such channel!\n")
			}
			api(b)
		case cmd == "api list_users" || cmd == "api list_users ":
			s.mu.Lock()
			b := s.users
			s.mu.Unlock()
			if b == nil {
				b = []byte("userid|context|domain|group|contact|callgroup|effective_caller_id_name|effective_caller_id_number\n\n+OK\n")
			}
			api(b)
		case cmd == "api status":
			api([]byte("UP 0 years, 0 days, 0 hours, 1 minute, 2 seconds\nFreeSWITCH (Version 1.10.12) is ready\n"))
		case verb == "exit":
			reply("+OK bye")
			return
		default:
			reply("-ERR command not found")
		}
	}
}

// readCommand reads one client command: the first line, then headers up
// to the blank line.
func readCommand(r *bufio.Reader) (string, textproto.MIMEHeader, error) {
	tp := textproto.NewReader(r)
	var first string
	for first == "" {
		line, err := tp.ReadLine()
		if err != nil {
			return "", nil, err
		}
		first = strings.TrimSpace(line)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return "", nil, err
	}
	return first, h, nil
}
