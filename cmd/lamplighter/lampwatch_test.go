package main

import (
	"encoding/xml"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A lampWatch is a BLF key on one extension (a real sipgo stack that
// subscribes to Event: dialog) that keeps every document it is sent, in
// order, so that a test can wait for a lamp state and afterwards check
// every state the lamp went through.

// lampDialog is one <dialog> of a dialog-info document.
type lampDialog struct {
	ID, CallID, LocalTag, RemoteTag string
	Direction, State                string
	Remote, RemoteName, Target      string // the remote identity, its display name, the remote target
	Held                            bool   // the local target says +sip.rendering=no
}

// lamp is one dialog-info document.
type lamp struct {
	Version int
	Dialogs []lampDialog
	Phone   string // the phonestate extension
	At      time.Time
	Raw     string
}

// idle reports a document with no dialog in progress.
func (l lamp) idle() bool {
	for _, d := range l.Dialogs {
		if d.State != "terminated" {
			return false
		}
	}
	return true
}

// only returns the one dialog in progress, ok false when there are none
// or several.
func (l lamp) only() (lampDialog, bool) {
	var out []lampDialog
	for _, d := range l.Dialogs {
		if d.State != "terminated" {
			out = append(out, d)
		}
	}
	if len(out) != 1 {
		return lampDialog{}, false
	}
	return out[0], true
}

func (l lamp) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "v%d %s", l.Version, l.Phone)
	for _, d := range l.Dialogs {
		fmt.Fprintf(&b, " [%s %s %s remote=%q(%s) call-id=%q tags=%q/%q held=%v]", d.ID, d.Direction, d.State,
			d.Remote, d.RemoteName, d.CallID, d.LocalTag, d.RemoteTag, d.Held)
	}
	return b.String()
}

// parseLamp reads a dialog-info document.
func parseLamp(body []byte) (lamp, error) {
	var doc struct {
		Version int `xml:"version,attr"`
		Dialogs []struct {
			ID        string `xml:"id,attr"`
			CallID    string `xml:"call-id,attr"`
			LocalTag  string `xml:"local-tag,attr"`
			RemoteTag string `xml:"remote-tag,attr"`
			Direction string `xml:"direction,attr"`
			State     string `xml:"state"`
			Local     struct {
				Target struct {
					Params []struct {
						Name  string `xml:"pname,attr"`
						Value string `xml:"pvalue,attr"`
					} `xml:"param"`
				} `xml:"target"`
			} `xml:"local"`
			Remote struct {
				Identity struct {
					Display string `xml:"display,attr"`
					URI     string `xml:",chardata"`
				} `xml:"identity"`
				Target struct {
					URI string `xml:"uri,attr"`
				} `xml:"target"`
			} `xml:"remote"`
		} `xml:"dialog"`
		Phone string `xml:"phonestate"`
	}
	if err := xml.Unmarshal(body, &doc); err != nil {
		return lamp{}, err
	}
	l := lamp{Version: doc.Version, Phone: doc.Phone, Raw: string(body)}
	for _, d := range doc.Dialogs {
		ld := lampDialog{ID: d.ID, CallID: d.CallID, LocalTag: d.LocalTag, RemoteTag: d.RemoteTag,
			Direction: d.Direction, State: strings.TrimSpace(d.State),
			Remote: strings.TrimSpace(d.Remote.Identity.URI), RemoteName: d.Remote.Identity.Display,
			Target: d.Remote.Target.URI}
		for _, p := range d.Local.Target.Params {
			if p.Name == "+sip.rendering" && p.Value == "no" {
				ld.Held = true
			}
		}
		l.Dialogs = append(l.Dialogs, ld)
	}
	return l, nil
}

// lampWatch watches one extension's lamp.
type lampWatch struct {
	t    *testing.T
	ext  string
	w    *watcher
	mu   sync.Mutex
	docs []lamp
	next int           // the first document the next wait looks at
	news chan struct{} // a document came
}

// watchLamp subscribes to ext's dialog state at server (host:port over
// UDP, from a trusted address) and keeps its documents until the test
// ends.
func watchLamp(t *testing.T, server, ext string) *lampWatch {
	t.Helper()
	return watchLampAs(t, server, ext, "", "")
}

// watchLampAs is watchLamp with digest credentials, for a server that
// does not trust the test's address.
func watchLampAs(t *testing.T, server, ext, user, pass string) *lampWatch {
	t.Helper()
	return watchLampIn(t, server, ext, "", user, pass)
}

// watchLampIn is watchLampAs for ext@domain (a tenant's), with the From
// in that domain too; "" is the server's address.
func watchLampIn(t *testing.T, server, ext, domain, user, pass string) *lampWatch {
	t.Helper()
	l := subscribeLamp(t, server, ext, domain, user, pass)
	l.wait("its first document", 5*time.Second, func(lamp) bool { return true })
	l.mu.Lock()
	l.next = 0 // the first document is for the test to wait on too
	l.mu.Unlock()
	return l
}

// subscribeLamp is watchLampIn without waiting for a first document
// (FreeSWITCH sends a feature key's first one only once its state is
// announced).
func subscribeLamp(t *testing.T, server, ext, domain, user, pass string) *lampWatch {
	t.Helper()
	l := &lampWatch{t: t, ext: ext, w: newWatcher(t, "UDP"), news: make(chan struct{}, 1)}
	if domain != "" {
		l.ext = ext + "@" + domain
	}
	l.w.username, l.w.password, l.w.fromUser = user, pass, user
	l.w.domain, l.w.fromDomain = domain, domain
	go l.read()
	if res := l.w.subscribe(server, ext, "dialog", 3600); !res.IsSuccess() { // FreeSWITCH answers 202
		t.Fatalf("SUBSCRIBE to %s: %d %s", ext, res.StatusCode, res.Reason)
	}
	return l
}

func (l *lampWatch) read() {
	for n := range l.w.notifies {
		if n.CallID().Value() != l.w.callID || len(n.Body()) == 0 {
			continue
		}
		doc, err := parseLamp(n.Body())
		doc.At = time.Now()
		l.mu.Lock()
		if err != nil {
			l.t.Errorf("lamp %s: unreadable document: %v\n%s", l.ext, err, n.Body())
			l.mu.Unlock()
			continue
		}
		l.docs = append(l.docs, doc)
		l.mu.Unlock()
		select {
		case l.news <- struct{}{}:
		default:
		}
	}
}

var _ = sip.NOTIFY

// setT makes the lamp report to t (a subtest) from now on.
func (l *lampWatch) setT(t *testing.T) {
	l.mu.Lock()
	l.t = t
	l.mu.Unlock()
}

// wait waits for a document after those earlier waits took that
// satisfies cond, and returns it; later waits look only after it.
func (l *lampWatch) wait(what string, within time.Duration, cond func(lamp) bool) lamp {
	l.mu.Lock()
	t := l.t
	l.mu.Unlock()
	t.Helper()
	deadline := time.After(within)
	for {
		l.mu.Lock()
		for i := l.next; i < len(l.docs); i++ {
			if cond(l.docs[i]) {
				l.next = i + 1
				doc := l.docs[i]
				l.mu.Unlock()
				return doc
			}
		}
		l.mu.Unlock()
		select {
		case <-l.news:
		case <-deadline:
			t.Fatalf("lamp %s never showed %s within %v; it showed:\n%s", l.ext, what, within, l.history())
		}
	}
}

// last is the newest document.
func (l *lampWatch) last() lamp {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.docs[len(l.docs)-1]
}

// mark moves the next wait past every document so far.
func (l *lampWatch) mark() {
	l.mu.Lock()
	l.next = len(l.docs)
	l.mu.Unlock()
}

// history is every document so far, one a line.
func (l *lampWatch) history() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, d := range l.docs {
		b.WriteString("  " + d.At.Format("15:04:05.000") + " " + d.String() + "\n")
	}
	return b.String()
}

// documents is every document so far.
func (l *lampWatch) documents() []lamp {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]lamp(nil), l.docs...)
}

// waitIdle waits for a document with no call.
func (l *lampWatch) waitIdle(within time.Duration) lamp {
	return l.wait("idle", within, func(d lamp) bool { return d.idle() && d.Phone == "idle" })
}

// waitCall waits for a document whose one call is in state (early or
// confirmed), in direction (recipient or initiator; "" for either), with
// the remote party's user part remote ("" for any).
func (l *lampWatch) waitCall(state, direction, remote string, within time.Duration) lampDialog {
	what := fmt.Sprintf("one %s %s call with %q", state, direction, remote)
	doc := l.wait(what, within, func(d lamp) bool {
		c, ok := d.only()
		return ok && c.State == state && (direction == "" || c.Direction == direction) &&
			(remote == "" || userOf(c.Remote) == remote)
	})
	c, _ := doc.only()
	return c
}

// userOf is the user part of a SIP URI.
func userOf(uri string) string {
	u := strings.TrimPrefix(strings.TrimPrefix(uri, "sip:"), "sips:")
	user, _, found := strings.Cut(u, "@")
	if !found {
		return ""
	}
	return user
}

// checkHonest checks every document the lamp was sent from the from'th
// on: no call in progress without a remote party or a Call-ID (a
// stand-in made from a device state), and no dialog id that stands for a
// line rather than a call. It reports the first offending document.
func (l *lampWatch) checkHonest(t *testing.T, from int) {
	t.Helper()
	docs := l.documents()
	for i := from; i < len(docs); i++ {
		for _, c := range docs[i].Dialogs {
			if c.State == "terminated" {
				continue
			}
			if c.Remote == "" || c.CallID == "" || strings.HasPrefix(c.ID, "line-") {
				var b strings.Builder
				for _, d := range docs[from:] {
					b.WriteString("  " + d.At.Format("15:04:05.000") + " " + d.String() + "\n")
				}
				t.Errorf("lamp %s showed a call without its party or ids: %s\nall it showed:\n%s", l.ext, docs[i], b.String())
				return
			}
		}
	}
}

// count is how many documents the lamp was sent so far.
func (l *lampWatch) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.docs)
}
