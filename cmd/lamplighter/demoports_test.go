package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holdPort binds addr on network for the test's length, as a PBX or web
// service on the same host would; a port something else already holds is
// as good.
func holdPort(t *testing.T, network, addr string) {
	t.Helper()
	var closer io.Closer
	var err error
	if network == "udp" {
		closer, err = net.ListenPacket(network, addr)
	} else {
		closer, err = net.Listen(network, addr)
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return
	}
	if err != nil {
		t.Fatalf("hold %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { closer.Close() })
}

func TestDemoStartsBesideAPBXOnItsPorts(t *testing.T) {
	// The usual first minute of a sidecar: `go run ./cmd/lamplighter` on
	// a host where the PBX holds 5060 (and something else 8080). The demo
	// starts anyway, on other ports it names in its first lines.
	t.Setenv("TMPDIR", t.TempDir()) // the demo's state directory
	holdPort(t, "udp", "127.0.0.1:5060")
	holdPort(t, "tcp", "127.0.0.1:5060")
	holdPort(t, "tcp", "127.0.0.1:8080")
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, nil, &out, &out) }()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exit %d:\n%s", code, out.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("did not stop within 10s of its context ending")
		}
	}()
	waitFor(t, &out, "lamplighter running", 10*time.Second)
	log := out.String()
	sipAddr := regexp.MustCompile(`"sip listening" .*transport=udp address=(\S+)`).FindStringSubmatch(log)
	httpAddr := regexp.MustCompile(`"http listening" address=(\S+)`).FindStringSubmatch(log)
	if sipAddr == nil || httpAddr == nil {
		t.Fatalf("no SIP or HTTP address in the log:\n%s", log)
	}
	if sipAddr[1] == "127.0.0.1:5060" || httpAddr[1] == "127.0.0.1:8080" {
		t.Fatalf("listening on a taken port:\n%s", log)
	}
	// Said plainly, before anything else: the ports moved and where to.
	first := strings.Join(strings.SplitN(log, "\n", 5)[:4], "\n")
	for _, want := range []string{
		"127.0.0.1:5060 is in use by another program (a PBX on this host?): the demo's SIP server (udp, tcp) listens on " + sipAddr[1] + " instead",
		"127.0.0.1:8080 is in use by another program (a web service?): the demo's switchboard (and API) listens on " + httpAddr[1] + " instead",
		"switchboard on http://" + httpAddr[1] + "/",
	} {
		if !strings.Contains(first, want) {
			t.Errorf("the first lines do not say %q:\n%s", want, first)
		}
	}
	// And it works there: a BLF key's SUBSCRIBE over UDP and TCP, the
	// switchboard's health.
	for _, tr := range []string{"UDP", "TCP"} {
		w := newWatcher(t, tr)
		if res := w.subscribe(sipAddr[1], "100", "dialog", 600); res.StatusCode != 200 {
			t.Errorf("SUBSCRIBE over %s to the moved demo: %d", tr, res.StatusCode)
		}
	}
	res, err := http.Get("http://" + httpAddr[1] + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Errorf("/healthz on the moved switchboard: %d", res.StatusCode)
	}
}

func TestDemoKeepsItsPortsWhenFree(t *testing.T) {
	// The move is for the demo alone and only when needed: free ports
	// are kept, and a real configuration's taken port stays an error
	// (TestSIPPortInUseIsAnError).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := ln.Addr().String()
	ln.Close()
	got, err := freeAddress(free, []string{"udp", "tcp"}, 2)
	if err != nil || got != free {
		t.Errorf("free %s: got %s, %v", free, got, err)
	}
	if _, err := freeAddress("127.0.0.1:http", []string{"tcp"}, 1); err == nil {
		t.Error("a port that is no number: no error")
	}
}
