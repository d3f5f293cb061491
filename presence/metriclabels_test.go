package presence

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// labelMetrics records the method labels responses are counted under.
type labelMetrics struct {
	nopMetrics
	mu     sync.Mutex
	labels map[string]int
}

func (m *labelMetrics) Response(method string, _ int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.labels[method]++
}

func (m *labelMetrics) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.labels {
		n += c
	}
	return n
}

// TestMadeUpMethodsShareOneLabel: requests with methods nobody defined,
// read or not, over UDP and TCP, are counted under "other": a peer
// inventing a method per request cannot grow the metrics' series.
func TestMadeUpMethodsShareOneLabel(t *testing.T) {
	m := &labelMetrics{labels: map[string]int{}}
	env := newEnv(t, trusted, func(o *Options) { o.Metrics = m })
	udp, err := net.Dial("udp", env.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	tcp, err := net.Dial("tcp", env.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	const n = 20
	request := func(method string, i int, transport string, conn net.Conn, contentLength string) string {
		return fmt.Sprintf("%s sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/%s %s;branch=z9hG4bK-m%d\r\n"+
			"From: <sip:w@127.0.0.1>;tag=%d\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: made-up-%d\r\nCSeq: 1 %s\r\n"+
			"Max-Forwards: 70\r\nContent-Length: %s\r\n\r\n",
			method, transport, conn.LocalAddr(), i, i, i, method, contentLength)
	}
	for i := range n {
		method := fmt.Sprintf("X%dMETHOD", i)
		// Read and well formed: sipgo answers 405.
		udp.Write([]byte(request(method, i, "UDP", udp, "0")))
		// Malformed (Content-Length past the datagram): 400 from the bytes.
		udp.Write([]byte(request(method+"B", i, "UDP", udp, "99")))
	}
	// A stream that cannot be framed: 400 and the connection closed.
	tcp.Write([]byte(request("ZZTOP", 0, "TCP", tcp, "x")))
	deadline := time.Now().Add(10 * time.Second)
	for m.count() < 2*n+1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d responses counted: %v", m.count(), 2*n+1, m.labels)
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for label := range m.labels {
		if label != "other" && strings.ToUpper(label) != label {
			t.Errorf("label %q", label)
		}
		if strings.Contains(label, "METHOD") || label == "ZZTOP" {
			t.Errorf("a made-up method became a label: %q", label)
		}
	}
	if m.labels["other"] != 2*n+1 {
		t.Errorf("%d responses under \"other\", want %d: %v", m.labels["other"], 2*n+1, m.labels)
	}
}
