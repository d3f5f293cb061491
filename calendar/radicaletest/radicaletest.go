// Package radicaletest runs a real CalDAV server from Debian, Radicale
// (package radicale), for tests: users with passwords, calendars made
// with MKCALENDAR and events written with PUT, as a calendar client
// does. With LAMPLIGHTER_E2E=require (set by `make test`) a missing
// Radicale fails the test instead of skipping it.
package radicaletest

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a running Radicale.
type Server struct {
	t testing.TB
	// URL is its base, "http://127.0.0.1:PORT".
	URL   string
	users map[string]string
	log   *lockedBuffer
}

// Start runs Radicale with users (name → password) until the test ends.
func Start(t testing.TB, users map[string]string) *Server {
	t.Helper()
	path, err := exec.LookPath("radicale")
	if err != nil {
		if os.Getenv("LAMPLIGHTER_E2E") == "require" {
			t.Fatal("radicale is required (apt-get install radicale)")
		}
		t.Skip("radicale not installed")
	}
	dir := t.TempDir()
	var htpasswd strings.Builder
	for u, p := range users {
		fmt.Fprintf(&htpasswd, "%s:%s\n", u, p)
	}
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(htpasswd.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, users: users, log: &lockedBuffer{}}
	// A port from below Linux's ephemeral range (32768-60999), so that no
	// connection another test opens meanwhile takes it first; should
	// another test's server have it after all, Radicale exits and
	// another port is tried.
	for attempt := 1; ; attempt++ {
		addr := freeAddr(t)
		ok, log := s.launch(path, dir, addr)
		if ok {
			s.URL = "http://" + addr
			return s
		}
		if attempt == 3 {
			t.Fatalf("radicale did not start: %s", log)
		}
	}
}

// freeAddr is a loopback address with a TCP port free now.
func freeAddr(t testing.TB) string {
	t.Helper()
	for range 1000 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free port for radicale")
	return ""
}

// launch starts Radicale on addr, kept until the test ends, and waits
// until it listens; false (with its output) when it exited first.
func (s *Server) launch(path, dir, addr string) (bool, string) {
	t := s.t
	conf := fmt.Sprintf(`[server]
hosts = %s
[auth]
type = htpasswd
htpasswd_filename = %s
htpasswd_encryption = plain
delay = 0
[rights]
type = owner_only
[storage]
filesystem_folder = %s
[logging]
level = warning
`, addr, filepath.Join(dir, "users"), filepath.Join(dir, "collections"))
	cfg := filepath.Join(dir, "config")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "--config", cfg)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("radicale's log:\n%s", s.log.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			return false, s.log.String()
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true, ""
		}
		if time.Now().After(deadline) {
			t.Fatalf("radicale did not listen on %s: %s", addr, s.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do makes one request as user and fails the test on an unexpected
// status.
func (s *Server) do(user, method, path, ctype, body string, want ...int) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.SetBasicAuth(user, s.users[user])
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, w := range want {
		if res.StatusCode == w {
			return
		}
	}
	s.t.Fatalf("radicale: %s %s: %s %s", method, path, res.Status, b)
}

// MakeCalendar makes user's calendar collection /user/name/ (of events,
// as a client's "new calendar" does) and returns its path.
func (s *Server) MakeCalendar(user, name string) string {
	s.t.Helper()
	path := "/" + user + "/" + name + "/"
	s.do(user, "MKCALENDAR", path, "application/xml", `<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>
<D:displayname>`+name+`</D:displayname>
<C:supported-calendar-component-set><C:comp name="VEVENT"/></C:supported-calendar-component-set>
</D:prop></D:set></C:mkcalendar>`, http.StatusCreated)
	return path
}

// Put writes one calendar object (a VCALENDAR) at calendar/uid.ics.
func (s *Server) Put(user, calendar, uid, ics string) {
	s.t.Helper()
	s.do(user, http.MethodPut, calendar+uid+".ics", "text/calendar; charset=utf-8", ics, http.StatusCreated, http.StatusNoContent, http.StatusOK)
}

// Delete removes calendar/uid.ics.
func (s *Server) Delete(user, calendar, uid string) {
	s.t.Helper()
	s.do(user, http.MethodDelete, calendar+uid+".ics", "", "", http.StatusOK, http.StatusNoContent)
}

// Event is a VCALENDAR with one event from start to end (UTC) and any
// more property lines ("RRULE:FREQ=WEEKLY").
func Event(uid string, start, end time.Time, summary string, more ...string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Lamplighter tests//EN\r\nBEGIN:VEVENT\r\nUID:%s\r\nDTSTAMP:%s\r\nDTSTART:%s\r\nDTEND:%s\r\nSUMMARY:%s\r\n",
		uid, start.UTC().Format("20060102T150405Z"), start.UTC().Format("20060102T150405Z"), end.UTC().Format("20060102T150405Z"), summary)
	for _, m := range more {
		b.WriteString(m + "\r\n")
	}
	b.WriteString("END:VEVENT\r\nEND:VCALENDAR\r\n")
	return b.String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
