package esl

import (
	"bufio"
	"bytes"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters/esl/esltest"
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

// fakeFreeSWITCH is the event socket double of esltest, with the test's
// fatal errors and recorded frames.
type fakeFreeSWITCH struct {
	*esltest.Server
	t testing.TB
}

func newFakeFreeSWITCH(t testing.TB) *fakeFreeSWITCH { return newFakeFreeSWITCHOn(t, "127.0.0.1:0") }

// newFakeFreeSWITCHOn listens on addr, with the recorded registrations.
func newFakeFreeSWITCHOn(t testing.TB, addr string) *fakeFreeSWITCH {
	s, err := esltest.Listen(addr, "ClueCon")
	if err != nil {
		t.Fatal(err)
	}
	s.SetRegistrations(apiBody(t, "show-registrations.esl-raw.txt"))
	t.Cleanup(func() { s.Close() })
	return &fakeFreeSWITCH{Server: s, t: t}
}

func (f *fakeFreeSWITCH) addr() string { return f.Addr() }

// waitLogin waits for the adapter to log in and returns that connection.
func (f *fakeFreeSWITCH) waitLogin() *esltest.Conn {
	f.t.Helper()
	c, err := f.WaitLogin(10 * time.Second)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// send writes recorded frames to the connection, byte for byte, as
// FreeSWITCH wrote them.
func (f *fakeFreeSWITCH) send(fc *esltest.Conn, frames ...frame) {
	f.t.Helper()
	for _, fr := range frames {
		f.SawSequence(fr.ev.seq())
		if err := fc.Write(fr.raw); err != nil {
			f.t.Fatalf("send: %v", err)
		}
	}
}
