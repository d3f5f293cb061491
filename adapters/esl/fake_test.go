package esl

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const fixtures = "../../../shared/fixtures/esl"

// frame is one ESL frame exactly as it was on the wire, and what it is.
type frame struct {
	raw         []byte
	contentType string
	ev          event // the event's headers, for text/event-plain
}

// readFrames splits a capture into its frames, byte for byte.
func readFrames(t testing.TB, path string) []frame {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("capture missing: %v", err)
	}
	var out []frame
	for len(data) > 0 {
		end := bytes.Index(data, []byte("\n\n"))
		if end < 0 {
			t.Fatalf("%s: trailing bytes %q", path, data)
		}
		hdr, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(data[:end+2]))).ReadMIMEHeader()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		n := end + 2
		if cl := hdr.Get("Content-Length"); cl != "" {
			l, _ := strconv.Atoi(cl)
			n += l
		}
		f := frame{raw: data[:n], contentType: hdr.Get("Content-Type")}
		if f.contentType == "text/event-plain" {
			body := data[end+2 : n]
			h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(body))).ReadMIMEHeader()
			if err != nil && len(h) == 0 {
				t.Fatalf("%s: event: %v", path, err)
			}
			f.ev = event(h)
		}
		out = append(out, f)
		data = data[n:]
	}
	return out
}

// events returns the event frames of a capture: one of the recordings,
// or one of ours in testdata/ (flows the recordings lack, same format).
func events(t testing.TB, name string) []frame {
	path := filepath.Join(fixtures, name)
	if strings.HasPrefix(name, "testdata/") {
		path = name
	}
	var out []frame
	for _, f := range readFrames(t, path) {
		if f.contentType == "text/event-plain" {
			out = append(out, f)
		}
	}
	return out
}

// apiBody returns the body of a recorded api/response.
func apiBody(t testing.TB, name string) []byte {
	fs := readFrames(t, filepath.Join(fixtures, name))
	if len(fs) != 1 || fs[0].contentType != "api/response" {
		t.Fatalf("%s: not one api/response", name)
	}
	_, body, _ := bytes.Cut(fs[0].raw, []byte("\n\n"))
	return body
}

// fakeFreeSWITCH is a test double of FreeSWITCH's inbound event socket on
// loopback TCP: auth/request, command/reply, api/response and
// text/event-plain frames with Content-Length framing, as FreeSWITCH 1.10
// writes them.
type fakeFreeSWITCH struct {
	t        testing.TB
	ln       net.Listener
	password string

	mu            sync.Mutex
	channels      []byte // body of `show channels as json`
	registrations []byte
	seq           uint64 // highest Event-Sequence sent
	current       *fakeConn
	silent        bool // read commands, answer none (a wedged FreeSWITCH)

	logins   atomic.Int32
	loggedIn chan *fakeConn
	commands chan string
}

type fakeConn struct {
	c  net.Conn
	mu sync.Mutex
}

func (fc *fakeConn) write(b []byte) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	_, err := fc.c.Write(b)
	return err
}

func newFakeFreeSWITCH(t testing.TB) *fakeFreeSWITCH { return newFakeFreeSWITCHOn(t, "127.0.0.1:0") }

// newFakeFreeSWITCHOn listens on addr.
func newFakeFreeSWITCHOn(t testing.TB, addr string) *fakeFreeSWITCH {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFreeSWITCH{t: t, ln: ln, password: "ClueCon",
		channels:      []byte(`{"row_count":0}`),
		registrations: apiBody(t, "show-registrations.esl-raw.txt"),
		loggedIn:      make(chan *fakeConn, 10), commands: make(chan string, 1000)}
	go f.serve()
	t.Cleanup(func() { ln.Close() })
	return f
}

func (f *fakeFreeSWITCH) addr() string { return f.ln.Addr().String() }

func (f *fakeFreeSWITCH) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		go f.handle(&fakeConn{c: c})
	}
}

// handle speaks the event socket protocol to one client.
func (f *fakeFreeSWITCH) handle(fc *fakeConn) {
	defer fc.c.Close()
	r := bufio.NewReader(fc.c)
	fc.write([]byte("Content-Type: auth/request\n\n"))
	authed := false
	for {
		cmd, headers, err := readCommand(r)
		if err != nil {
			return
		}
		select {
		case f.commands <- cmd:
		default:
		}
		f.mu.Lock()
		silent := f.silent
		f.mu.Unlock()
		if silent {
			continue
		}
		reply := func(text string) { fc.write([]byte("Content-Type: command/reply\nReply-Text: " + text + "\n\n")) }
		api := func(body []byte) {
			fc.write(fmt.Appendf(nil, "Content-Type: api/response\nContent-Length: %d\n\n%s", len(body), body))
		}
		verb, args, _ := strings.Cut(cmd, " ")
		switch {
		case !authed && verb == "auth":
			if args != f.password {
				reply("-ERR invalid")
				fc.write([]byte("Content-Type: text/disconnect-notice\nContent-Length: 67\n\nDisconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"))
				return
			}
			authed = true
			reply("+OK accepted")
			f.logins.Add(1)
			f.mu.Lock()
			f.current = fc
			f.mu.Unlock()
			f.loggedIn <- fc
		case !authed:
			reply("-ERR command not found")
		case verb == "event":
			reply("+OK event listener enabled plain")
		case verb == "sendevent":
			reply("+OK 4d5f7c52-0e0c-4b8e-9d5a-1f3e0c2b9a11")
			f.mu.Lock()
			f.seq++
			seq := f.seq
			f.mu.Unlock()
			body := fmt.Sprintf("Event-Name: %s\nEvent-Sequence: %d\n", args, seq)
			for k, vs := range headers {
				body += k + ": " + vs[0] + "\n"
			}
			body += "\n"
			fc.write(fmt.Appendf(nil, "Content-Length: %d\nContent-Type: text/event-plain\n\n%s", len(body), body))
		case cmd == "api show channels as json":
			f.mu.Lock()
			b := f.channels
			f.mu.Unlock()
			api(b)
		case cmd == "api show registrations as json":
			f.mu.Lock()
			b := f.registrations
			f.mu.Unlock()
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

// waitLogin waits for the adapter to log in and returns that connection.
func (f *fakeFreeSWITCH) waitLogin() *fakeConn {
	f.t.Helper()
	select {
	case c := <-f.loggedIn:
		return c
	case <-time.After(10 * time.Second):
		f.t.Fatal("the adapter did not log in within 10s")
	}
	return nil
}

// send writes recorded frames to the connection, byte for byte, as
// FreeSWITCH wrote them.
func (f *fakeFreeSWITCH) send(fc *fakeConn, frames ...frame) {
	f.t.Helper()
	for _, fr := range frames {
		if s := fr.ev.seq(); s != 0 {
			f.mu.Lock()
			f.seq = max(f.seq, s)
			f.mu.Unlock()
		}
		if err := fc.write(fr.raw); err != nil {
			f.t.Fatalf("send: %v", err)
		}
	}
}

func (f *fakeFreeSWITCH) setSilent(v bool) { f.mu.Lock(); f.silent = v; f.mu.Unlock() }
