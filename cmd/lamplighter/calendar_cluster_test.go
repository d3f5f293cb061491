package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/cluster/natstest"
)

// TestClusterReadsEachCalendarOnce: two nodes with the same calendars;
// only the leading node reads them, and what it reads reaches a watcher
// held by the other node; when the leader dies the other node reads
// them, and the meeting stays shown.
func TestClusterReadsEachCalendarOnce(t *testing.T) {
	nats := natstest.Start(t, 1)
	bin := buildBinary(t)
	now := time.Now().UTC()
	var mu sync.Mutex
	reads := map[string]int{} // by node
	feed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reads[r.URL.Query().Get("node")]++
		mu.Unlock()
		fmt.Fprintf(w, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:m\r\nDTSTAMP:%[1]s\r\nDTSTART:%[1]s\r\nDTEND:%[2]s\r\nSUMMARY:Board\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
			now.Add(-time.Minute).Format("20060102T150405Z"), now.Add(time.Hour).Format("20060102T150405Z"))
	}))
	defer feed.Close()
	readsBy := func(node string) int {
		mu.Lock()
		defer mu.Unlock()
		return reads[node]
	}
	const ttl = 2 * time.Second
	config := func(name string) string {
		path := clusterConfig(t, t.TempDir(), name, nats.URLs(), ttl.String(), "")
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "calendar:\n  timezone: UTC\n  default: {url: \"%s/{user}.ics?node=%s\"}\n", feed.URL, name)
		f.Close()
		return path
	}
	b := start(t, bin, config("b"))
	addrs(t, b)
	c := start(t, bin, config("c"))
	sipC, httpC := addrs(t, c)

	w := newWatcher(t, "UDP")
	if res := w.subscribe(sipC, "100", "presence", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE on node c: %d", res.StatusCode)
	}
	w.notifyWhere("<rpid:meeting/>", 20*time.Second) // read by b, shown by c
	// Both calendars (debbie's, bob's) read by b, none by c, however
	// long c has been settled.
	waitUntil(t, 10*time.Second, "b read both calendars", func() bool { return readsBy("b") >= 2 })
	settled(t, httpC)
	if n := readsBy("c"); n != 0 {
		t.Errorf("node c read the calendars %d times while b leads", n)
	}

	b.kill()
	waitUntil(t, ttl+15*time.Second, "c reads the calendars once b is gone", func() bool { return readsBy("c") >= 2 })
	if res := w.subscribe("", "", "", 600); res.StatusCode != 200 {
		t.Fatalf("refresh on node c: %d", res.StatusCode)
	}
	if n := w.notifyWhere("active", 5*time.Second); !strings.Contains(string(n.Body()), "<rpid:meeting/>") {
		t.Errorf("the meeting is gone after the failover:\n%s", n.Body())
	}
}
