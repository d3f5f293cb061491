package pbxtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ESLConn is a raw event-socket connection to the test's FreeSWITCH: it
// fires events as a FreeSWITCH script does (a FusionPBX Lua script's
// PRESENCE_IN, say) and reads the events it subscribed to.
type ESLConn struct {
	c       net.Conn
	replies chan string
	events  chan map[string]string
}

// Dial opens an event-socket connection and authenticates.
func (f *FreeSWITCH) Dial() (*ESLConn, error) {
	c, err := net.DialTimeout("tcp", f.ESL(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	e := &ESLConn{c: c, replies: make(chan string, 16), events: make(chan map[string]string, 1024)}
	go e.read(bufio.NewReader(c))
	if err := e.command("auth " + ESLPassword); err != nil {
		c.Close()
		return nil, err
	}
	return e, nil
}

// Close ends the connection.
func (e *ESLConn) Close() error { return e.c.Close() }

// Subscribe asks for events by name (CUSTOM subclasses after CUSTOM).
func (e *ESLConn) Subscribe(names ...string) error {
	return e.command("event plain " + strings.Join(names, " "))
}

// SendEvent fires an event with the given headers.
func (e *ESLConn) SendEvent(name string, headers map[string]string) error {
	var b strings.Builder
	b.WriteString("sendevent " + name)
	for k, v := range headers {
		b.WriteString("\n" + k + ": " + v)
	}
	return e.command(b.String())
}

// Events are the events subscribed to, their headers decoded.
func (e *ESLConn) Events() <-chan map[string]string { return e.events }

// command sends one command and waits for its reply.
func (e *ESLConn) command(cmd string) error {
	if _, err := io.WriteString(e.c, cmd+"\n\n"); err != nil {
		return err
	}
	select {
	case r, ok := <-e.replies:
		if !ok {
			return fmt.Errorf("event socket closed")
		}
		if !strings.HasPrefix(r, "+OK") {
			return fmt.Errorf("%s: %s", strings.Fields(cmd)[0], r)
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s: no reply", strings.Fields(cmd)[0])
	}
}

func (e *ESLConn) read(r *bufio.Reader) {
	defer close(e.replies)
	tp := textproto.NewReader(r)
	for {
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			return
		}
		var body []byte
		if n, err := strconv.Atoi(h.Get("Content-Length")); err == nil && n > 0 {
			body = make([]byte, n)
			if _, err := io.ReadFull(r, body); err != nil {
				return
			}
		}
		switch h.Get("Content-Type") {
		case "command/reply":
			e.replies <- h.Get("Reply-Text")
		case "text/event-plain":
			ev := map[string]string{}
			for _, line := range strings.Split(string(body), "\n") {
				k, v, ok := strings.Cut(line, ": ")
				if !ok {
					continue
				}
				if u, err := url.QueryUnescape(v); err == nil {
					v = u
				}
				ev[k] = v
			}
			select {
			case e.events <- ev:
			default: // a test that stopped reading loses events, not the connection
			}
		}
	}
}
