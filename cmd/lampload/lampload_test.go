package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadRun runs the whole tool, small, against a freshly built
// Lamplighter: every phase must see every NOTIFY it waits for.
func TestLoadRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Lamplighter")
	}
	bin := filepath.Join(t.TempDir(), "lamplighter")
	if out, err := exec.Command("go", "build", "-o", bin, "../lamplighter").CombinedOutput(); err != nil {
		t.Fatalf("building lamplighter: %v\n%s", err, out)
	}
	o := options{binary: bin, subs: 400, users: 40, perPhone: 25, tcpShare: 0.25, dialogShare: 0.5,
		rate: 200, duration: 2 * time.Second, fanout: 200, fanoutRounds: 3, burst: true, restart: true,
		window: 100, expires: 600, logLevel: "info", skipHeld: true, flood: 2000, floodFor: time.Second,
		floodModes: []floodMode{{"none", "udp"}, {"wrong-password", "udp"}, {"unknown-user", "tcp"}},
		settle:     500 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := run(ctx, o, &progress)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, progress.String())
	}
	var table bytes.Buffer
	res.print(&table)
	t.Logf("\n%s", table.String())
	if s := res.Setup; s.OK != 400 || s.WithoutNotify != 0 {
		t.Errorf("set-up: %+v", s)
	}
	if l := res.Latency; l.Events < 300 || l.Missing != 0 || l.Received != l.Notifies || l.P99Ms <= 0 {
		t.Errorf("latency phase: %+v", l)
	}
	if f := res.FanoutOne; len(f.Rounds) != 3 || f.Missing != 0 || f.Received != 600 {
		t.Errorf("fan-out: %+v", f)
	}
	if b := res.FanoutMany; b.Changes != 40 || b.Missing != 0 || b.Received != 400 {
		t.Errorf("burst: %+v", b)
	}
	if len(res.Floods) != 3 {
		t.Errorf("%d floods, want 3", len(res.Floods))
	}
	for _, f := range res.Floods {
		if f.Sent != 2000 || f.Challenged != 2000 || f.Error != "" || f.Latency.Missing != 0 {
			t.Errorf("flood: %+v", f)
		}
	}
	if r := res.Restart; r.Renotified != 600 || r.Error != "" {
		t.Errorf("restart: %+v", r)
	}
	if res.Phone.Malformed != 0 || res.Server.NotifyFailed != 0 {
		t.Errorf("malformed %d, failed %d", res.Phone.Malformed, res.Server.NotifyFailed)
	}
	if res.Memory.Before.HeapLive <= 0 || res.Memory.Loaded.RSS <= 0 {
		t.Errorf("memory not read: %+v", res.Memory)
	}
	if res.RawUDP.PerSecond <= 0 || !strings.Contains(table.String(), "restart re-NOTIFY") {
		t.Errorf("raw UDP %v; table:\n%s", res.RawUDP.PerSecond, table.String())
	}
}

// TestCompareRun runs -compare, small: Kamailio's presence server (from
// Debian, installed by .ci/deps) and then Lamplighter take the same
// subscriptions and PUBLISHed changes, and the table shows both.
func TestCompareRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Lamplighter and Kamailio")
	}
	kam, err := exec.LookPath("kamailio")
	if err != nil {
		if os.Getenv("LAMPLIGHTER_E2E") == "require" {
			t.Fatal("kamailio missing: run .ci/deps")
		}
		t.Skip("kamailio missing: run .ci/deps")
	}
	bin := filepath.Join(t.TempDir(), "lamplighter")
	if out, err := exec.Command("go", "build", "-o", bin, "../lamplighter").CombinedOutput(); err != nil {
		t.Fatalf("building lamplighter: %v\n%s", err, out)
	}
	o := options{binary: bin, subs: 300, users: 30, perPhone: 25, fanout: 100, fanoutRounds: 3, window: 100,
		expires: 600, logLevel: "info", compare: true, compareInterval: 300 * time.Millisecond, kamailio: kam,
		kamailioModules: kamailioModules(), kamailioChildren: 2}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := runCompare(ctx, o, &progress)
	if err != nil {
		t.Fatalf("compare: %v\n%s", err, progress.String())
	}
	var table bytes.Buffer
	res.print(&table)
	t.Logf("\n%s", table.String())
	if len(res.Servers) != 2 || res.Servers[0].Server != "Kamailio" || res.Servers[1].Server != "Lamplighter" {
		t.Fatalf("servers: %+v", res.Servers)
	}
	for _, s := range res.Servers {
		if s.Error != "" || s.Setup.OK != 300 || s.Setup.WithoutNotify != 0 {
			t.Errorf("%s set-up: %+v (%s)", s.Server, s.Setup, s.Error)
		}
		if f := s.Fanout; f.Error != "" || f.Converged != 100 || f.Delivered == 0 || f.P99 <= 0 {
			t.Errorf("%s fan-out: %+v", s.Server, f)
		}
	}
	if !strings.Contains(table.String(), "Lamplighter vs Kamailio") || !strings.Contains(table.String(), "×") {
		t.Errorf("no ratio in the table:\n%s", table.String())
	}
}

// TestClusterRun: a small -cluster run against real nodes on a real
// nats-server: every subscription set up, refreshed in its dialog, and
// every one of the killed node's subscriptions NOTIFYed by another node.
func TestClusterRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Lamplighter nodes and nats-server")
	}
	if _, err := exec.LookPath("nats-server"); err != nil {
		if _, err := exec.LookPath("/usr/sbin/nats-server"); err != nil {
			if os.Getenv("LAMPLIGHTER_E2E") == "require" {
				t.Fatal("nats-server missing: run .ci/deps")
			}
			t.Skip("nats-server missing: run .ci/deps")
		}
	}
	bin := filepath.Join(t.TempDir(), "lamplighter")
	if out, err := exec.Command("go", "build", "-o", bin, "../lamplighter").CombinedOutput(); err != nil {
		t.Fatalf("building lamplighter: %v\n%s", err, out)
	}
	o := options{binary: bin, subs: 300, users: 30, perPhone: 25, window: 100, expires: 600, logLevel: "info", cluster: 2}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := runCluster(ctx, o, &progress)
	if err != nil {
		t.Fatalf("cluster: %v\n%s", err, progress.String())
	}
	var table bytes.Buffer
	res.print(&table)
	t.Logf("\n%s", table.String())
	if res.Setup.OK != 300 || res.Refresh.OK != 300 || res.WritesPerSetup < 1 {
		t.Errorf("set-up %d, refresh %d, writes per set-up %.2f", res.Setup.OK, res.Refresh.OK, res.WritesPerSetup)
	}
	if res.FailoverShare != 150 || res.FailoverNotified != 150 {
		t.Errorf("failover: %d of %d NOTIFYed", res.FailoverNotified, res.FailoverShare)
	}
}

// TestSubscribeRequestRendering checks the phones' SUBSCRIBE, written
// with appends, against the same request written with fmt, for a first
// SUBSCRIBE and for a refresh in the dialog.
func TestSubscribeRequestRendering(t *testing.T) {
	ps := newPhones("127.0.0.1:5060")
	p := &phone{ps: ps, id: 7, transport: "TCP", port: 40123}
	s := &sub{phone: p, user: &user{ext: "100042"}, pkg: "dialog", callID: "ll3-40123@lampload", tag: "t3"}
	for _, toTag := range []string{"", "srv9"} {
		s.toTag, s.attempt = toTag, len(toTag)
		want := fmt.Sprintf("SUBSCRIBE sip:%s@%s SIP/2.0\r\n"+
			"Via: SIP/2.0/%s %s;branch=z9hG4bK-%s-%s-%d;rport\r\n"+
			"Max-Forwards: 70\r\n"+
			"From: <sip:phone%d@lampload>;tag=%s\r\n"+
			"To: <sip:%s@lampload>%s\r\n"+
			"Call-ID: %s\r\n"+
			"CSeq: %d SUBSCRIBE\r\n"+
			"Contact: <sip:phone%d@%s;transport=%s>\r\n"+
			"Event: %s\r\n"+
			"Accept: %s\r\n"+
			"Expires: %d\r\n"+
			"User-Agent: lampload\r\n"+
			"Content-Length: 0\r\n\r\n",
			"100042", "127.0.0.1:5060", "TCP", "127.0.0.1:40123", "t3", s.callID, s.attempt,
			7, "t3", "100042", toTagParam(toTag), s.callID, s.attempt+1, 7, "127.0.0.1:40123", "tcp", "dialog",
			"application/dialog-info+xml", 600)
		if got := string(p.subscribeRequest(s, 600)); got != want {
			t.Errorf("to-tag %q:\ngot  %q\nwant %q", toTag, got, want)
		}
	}
}

// TestHeaderNames checks the phones' header matching: any case, compact
// forms, and no prefix or longer name taken for a header.
func TestHeaderNames(t *testing.T) {
	for _, c := range []struct {
		name, long, compact string
		want                bool
	}{
		{"Via", "Via", "v", true}, {"VIA", "Via", "v", true}, {"v", "Via", "v", true}, {"V", "Via", "v", true},
		{"Vi", "Via", "v", false}, {"Vias", "Via", "v", false}, {"t", "Via", "v", false},
		{"call-id", "Call-ID", "i", true}, {"i", "Call-ID", "i", true},
		{"c", "CSeq", "", false}, {"Content-Length", "Content-Length", "l", true}, {"l", "Content-Length", "l", true},
	} {
		if got := headerIs([]byte(c.name), c.long, c.compact); got != c.want {
			t.Errorf("headerIs(%q, %q, %q) = %v", c.name, c.long, c.compact, got)
		}
	}
}
