package discovery

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
)

// fakePBX is a directory and a connection the test controls.
type fakePBX struct {
	mu     sync.Mutex
	users  []adapters.DiscoveredUser
	err    error
	reads  chan struct{} // one value per read
	status adapters.Status
}

func newFakePBX(users ...string) *fakePBX {
	f := &fakePBX{reads: make(chan struct{}, 100)}
	f.set(nil, users...)
	return f
}

func (f *fakePBX) set(err error, exts ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
	f.users = nil
	for _, e := range exts {
		f.users = append(f.users, adapters.DiscoveredUser{PBX: "pbx", Extension: e, Device: "PJSIP/" + e})
	}
}

func (f *fakePBX) connect(at time.Time) {
	f.mu.Lock()
	f.status = adapters.Status{Connected: true, Since: at}
	f.mu.Unlock()
}

func (f *fakePBX) Discover(context.Context) ([]adapters.DiscoveredUser, error) {
	f.mu.Lock()
	defer func() { f.mu.Unlock(); f.reads <- struct{}{} }()
	return f.users, f.err
}

func (f *fakePBX) Status() adapters.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// logBuffer is a logger whose output the test reads.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

func waitRead(t *testing.T, f *fakePBX, why string) {
	t.Helper()
	select {
	case <-f.reads:
	case <-time.After(10 * time.Second):
		t.Fatalf("no read of the directory after %s", why)
	}
}

func extensions(f Found, pbx string) string {
	var out []string
	for _, u := range f[pbx] {
		out = append(out, u.Extension)
	}
	return strings.Join(out, ",")
}

func TestKeeperReadsAtConnectRefreshAndKeepsWhatFails(t *testing.T) {
	dir := t.TempDir()
	logs := &logBuffer{}
	k := Open(dir, slog.New(slog.NewTextHandler(logs, nil)))
	pbx := newFakePBX("100", "101")
	changed := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		k.Run(ctx, []Source{{Name: "pbx", Discoverer: pbx, Status: pbx.Status, Interval: time.Hour}},
			func() { changed <- struct{}{} })
	}()
	defer func() { cancel(); <-done }()
	waitChange := func(why string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("no change after %s", why)
		}
	}

	pbx.connect(time.Unix(1, 0))
	waitRead(t, pbx, "a connection")
	waitChange("the first read")
	if got := extensions(k.Found(), "pbx"); got != "100,101" {
		t.Fatalf("found %s", got)
	}

	// A reconnection reads again; the same directory is no change.
	pbx.set(nil, "100", "101")
	pbx.connect(time.Unix(2, 0))
	waitRead(t, pbx, "a reconnection")

	// A refresh (a reload) reads again: a new extension.
	pbx.set(nil, "100", "101", "102")
	k.Refresh()
	waitRead(t, pbx, "a refresh")
	waitChange("an extension added")
	if got := extensions(k.Found(), "pbx"); got != "100,101,102" {
		t.Fatalf("found %s", got)
	}

	// A failing read keeps what was read, and is logged once per error.
	pbx.set(errors.New("connection refused"))
	for range 2 {
		k.Refresh()
		waitRead(t, pbx, "a refresh")
	}
	st := k.Status()
	if len(st) != 1 || st[0].Error != "connection refused" || st[0].Users != 3 || extensions(k.Found(), "pbx") != "100,101,102" {
		t.Errorf("after errors: %+v, found %s", st, extensions(k.Found(), "pbx"))
	}
	if n := logs.count("connection refused"); n != 1 {
		t.Errorf("the error was logged %d times", n)
	}

	// A PBX listing no one is not believed.
	pbx.set(nil)
	k.Refresh()
	waitRead(t, pbx, "a refresh")
	if st := k.Status(); !strings.Contains(st[0].Error, "lists no users: the 3 read before are kept") || extensions(k.Found(), "pbx") != "100,101,102" {
		t.Errorf("after an empty read: %+v", st)
	}

	// Removal is believed; it is kept in the state directory.
	pbx.set(nil, "100")
	k.Refresh()
	waitRead(t, pbx, "a refresh")
	waitChange("an extension removed")
	if st := k.Status(); st[0].Error != "" || st[0].Users != 1 {
		t.Errorf("after a good read: %+v", st)
	}
	if logs.count("read again") != 1 {
		t.Errorf("the recovery is not logged:\n%s", logs.buf.String())
	}
	again := Open(dir, slog.New(slog.DiscardHandler))
	if got := extensions(again.Found(), "pbx"); got != "100" {
		t.Errorf("the state directory holds %q", got)
	}
	select {
	case <-changed:
		t.Error("a change was reported for a read that changed nothing")
	default:
	}
}

func TestKeeperSetsADamagedFileAside(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(`{"version":1,"pbxs":{"x":`), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	k := Open(dir, slog.New(slog.NewTextHandler(logs, nil)))
	if len(k.Found()) != 0 {
		t.Errorf("found %v in a damaged file", k.Found())
	}
	aside, _ := filepath.Glob(filepath.Join(dir, FileName+".broken-*"))
	if len(aside) != 1 || logs.count("kept aside") != 1 {
		t.Errorf("kept aside: %v; log:\n%s", aside, logs.buf.String())
	}
	// A file of another format version is kept aside too, not misread.
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(`{"version":9,"pbxs":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	Open(dir, slog.New(slog.NewTextHandler(logs, nil)))
	if logs.count("format version 9") != 1 {
		t.Errorf("log:\n%s", logs.buf.String())
	}
}
