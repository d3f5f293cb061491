package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// floodResult is what one flood cost while the watchers' latency was
// measured: the issue's "100,000 unauthenticated SUBSCRIBEs from one
// address in 10 s", and issue 27's floods with credentials over UDP and
// TCP.
type floodResult struct {
	Mode       string        `json:"mode"` // auth/transport, as -flood-modes names it
	Sent       int           `json:"sent"`
	Challenged int64         `json:"challenged_401"`
	Seconds    float64       `json:"seconds"`
	Before     memory        `json:"before"`
	After      memory        `json:"after"`
	RSSGrowth  int64         `json:"rss_growth_bytes"`
	Latency    latencyResult `json:"latency_during"`
	Error      string        `json:"error,omitempty"`
}

// floodMode is what a flood's SUBSCRIBEs carry and how they travel.
type floodMode struct {
	Auth      string // none, wrong-password or unknown-user
	Transport string // udp or tcp
}

func (m floodMode) String() string { return m.Auth + "/" + m.Transport }

// floodAuths and floodTransports are the modes -flood-modes takes.
var (
	floodAuths      = []string{"none", "wrong-password", "unknown-user"}
	floodTransports = []string{"udp", "tcp"}
)

// parseFloodModes reads -flood-modes: a comma-separated list of
// AUTH/TRANSPORT, or "all" for every combination.
func parseFloodModes(v string) ([]floodMode, error) {
	var modes []floodMode
	if v == "all" {
		for _, a := range floodAuths {
			for _, tr := range floodTransports {
				modes = append(modes, floodMode{a, tr})
			}
		}
		return modes, nil
	}
	for _, m := range strings.Split(v, ",") {
		a, tr, _ := strings.Cut(strings.TrimSpace(m), "/")
		if tr == "" {
			tr = "udp"
		}
		if !slices.Contains(floodAuths, a) || !slices.Contains(floodTransports, tr) {
			return nil, fmt.Errorf("flood mode %q: want AUTH/TRANSPORT with AUTH one of %v and TRANSPORT one of %v", m, floodAuths, floodTransports)
		}
		modes = append(modes, floodMode{a, tr})
	}
	return modes, nil
}

// floodSource is the address the flood comes from: loopback, but not the
// phones' 127.0.0.1, which the config trusts.
var floodSource = net.IPv4(127, 0, 0, 2)

// measureFlood sends n SUBSCRIBEs in the given mode, each with its own
// Call-ID, from one untrusted address, evenly over d, while PBX events
// go on at rate for the well-behaved watchers; it reads memory before and
// after, settled (see settledMemory). With credentials, the nonce is a
// real one the server issued (taken from a first challenge), so a wrong
// password is checked as any would be. started is called as the first
// request goes.
func measureFlood(ctx context.Context, t *target, c *changes, p *pbx, users []*user, n int, d time.Duration, rate float64,
	mode floodMode, started func()) floodResult {
	r := floodResult{Mode: mode.String()}
	var err error
	if r.Before, err = t.settledMemory(ctx); err != nil {
		r.Error = err.Error()
		return r
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: floodSource})
	if err != nil {
		r.Error = fmt.Sprintf("flood socket on %s: %v", floodSource, err)
		return r
	}
	defer conn.Close()
	_ = conn.SetReadBuffer(8 << 20)
	_ = conn.SetWriteBuffer(8 << 20)
	sa, err := net.ResolveUDPAddr("udp", t.sipAddr)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	server := sa.AddrPort()
	local := conn.LocalAddr().(*net.UDPAddr)
	host, self := local.IP.String(), local.String()
	var authorization string
	if mode.Auth != "none" {
		if authorization, err = floodCredentials(conn, server, host, self, t.sipAddr, mode.Auth, users[0]); err != nil {
			r.Error = err.Error()
			return r
		}
	}
	// Where the flood goes, and a reader counting its 401s.
	var challenged atomic.Int64
	send := func(b []byte) error { _, err := conn.WriteToUDPAddrPort(b, server); return err }
	via := "SIP/2.0/UDP "
	if mode.Transport == "tcp" {
		dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: floodSource}}
		tc, err := dialer.DialContext(ctx, "tcp", t.sipAddr)
		if err != nil {
			r.Error = fmt.Sprintf("flood connection: %v", err)
			return r
		}
		defer tc.Close()
		send = func(b []byte) error { _, err := tc.Write(b); return err }
		via, self = "SIP/2.0/TCP ", tc.LocalAddr().String()
		go countStreamChallenges(tc, &challenged)
	} else {
		go countDatagramChallenges(conn, &challenged)
	}
	started()
	fctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	lat := make(chan latencyResult, 1)
	go func() { lat <- measureLatency(fctx, c, p, users, rate, d) }()
	start := time.Now()
	const batch = 100
	// Written into one reused buffer: the flood generator shares the
	// process (and its collector) with the phones whose latency is
	// measured meanwhile, so it must not make garbage of its own.
	runID := strconv.FormatInt(start.UnixNano(), 10)
	msg := make([]byte, 0, 2048)
	for i := 0; i < n && fctx.Err() == nil; i++ {
		ext := users[i%len(users)].ext
		if authorization != "" {
			ext = users[0].ext // the digest names the victim's URI
		}
		msg = floodSubscribe(msg[:0], ext, t.sipAddr, via, self, host, i, runID, authorization)
		if err := send(msg); err == nil {
			r.Sent++
		}
		if i%batch == batch-1 { // evenly over d
			if ahead := time.Until(start.Add(time.Duration(float64(d) * float64(i+1) / float64(n)))); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	r.Seconds = time.Since(start).Seconds()
	r.Latency = <-lat
	time.Sleep(time.Second) // the last answers
	r.Challenged = challenged.Load()
	if r.After, err = t.settledMemory(ctx); err != nil {
		r.Error = err.Error()
	}
	r.RSSGrowth = r.After.RSS - r.Before.RSS
	return r
}

// floodSubscribe appends the i-th SUBSCRIBE of a flood to msg.
func floodSubscribe(msg []byte, ext, server, via, self, host string, i int, runID, authorization string) []byte {
	msg = append(msg, "SUBSCRIBE sip:"...)
	msg = append(msg, ext...)
	msg = append(msg, '@')
	msg = append(msg, server...)
	msg = append(msg, " SIP/2.0\r\nVia: "...)
	msg = append(msg, via...)
	msg = append(msg, self...)
	msg = append(msg, ";branch=z9hG4bKflood"...)
	msg = strconv.AppendInt(msg, int64(i), 10)
	msg = append(msg, '.')
	msg = append(msg, runID...)
	msg = append(msg, ";rport\r\nMax-Forwards: 70\r\nFrom: <sip:intruder@"...)
	msg = append(msg, host...)
	msg = append(msg, ">;tag=f"...)
	msg = strconv.AppendInt(msg, int64(i), 10)
	msg = append(msg, "\r\nTo: <sip:"...)
	msg = append(msg, ext...)
	msg = append(msg, '@')
	msg = append(msg, host...)
	msg = append(msg, ">\r\nCall-ID: flood-"...)
	msg = strconv.AppendInt(msg, int64(i), 10)
	msg = append(msg, '-')
	msg = append(msg, runID...)
	msg = append(msg, '@')
	msg = append(msg, host...)
	msg = append(msg, "\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:intruder@"...)
	msg = append(msg, self...)
	msg = append(msg, ">\r\n"...)
	if authorization != "" {
		msg = append(msg, "Authorization: "...)
		msg = append(msg, authorization...)
		msg = append(msg, "\r\n"...)
	}
	return append(msg, "Event: dialog\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"...)
}

// floodCredentials asks the server for a challenge (one SUBSCRIBE without
// credentials) and answers it with the flood's credentials: the victim's
// name and a wrong password, or a user the server does not know. The
// victim is the first user, the one the load config gives a SIP password
// (writeConfig), so that each guess costs the server a digest. The
// same header serves every request of the flood: the server checks the
// password before the nonce's binding and count, so each costs a digest.
func floodCredentials(conn *net.UDPConn, server netip.AddrPort, host, self, serverAddr, auth string, victim *user) (string, error) {
	msg := floodSubscribe(nil, victim.ext, serverAddr, "SIP/2.0/UDP ", self, host, -1, "challenge", "")
	if _, err := conn.WriteToUDPAddrPort(msg, server); err != nil {
		return "", err
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536)
	for {
		k, err := conn.Read(buf)
		if err != nil {
			return "", fmt.Errorf("no challenge to take a nonce from: %w", err)
		}
		msg, err := sip.ParseMessage(buf[:k])
		res, ok := msg.(*sip.Response)
		if err != nil || !ok {
			continue
		}
		h := res.GetHeader("WWW-Authenticate")
		if h == nil {
			continue
		}
		chal, err := digest.ParseChallenge(h.Value())
		if err != nil {
			return "", err
		}
		user := victim.id
		if auth == "unknown-user" {
			user = "intruder"
		}
		cred, err := digest.Digest(chal, digest.Options{Method: "SUBSCRIBE", URI: "sip:" + victim.ext + "@" + serverAddr,
			Username: user, Password: "a wrong guess", Count: 1, Cnonce: "flood"})
		if err != nil {
			return "", err
		}
		return cred.String(), nil
	}
}

// countDatagramChallenges counts the 401s arriving on conn.
func countDatagramChallenges(conn *net.UDPConn, n *atomic.Int64) {
	buf := make([]byte, 65536)
	for {
		k, err := conn.Read(buf)
		if err != nil {
			return
		}
		if bytes.HasPrefix(buf[:k], []byte("SIP/2.0 401")) {
			n.Add(1)
		}
	}
}

// countStreamChallenges counts the 401s arriving on a stream: status
// lines, read without making garbage.
func countStreamChallenges(c net.Conn, n *atomic.Int64) {
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
		if bytes.HasPrefix(line, []byte("SIP/2.0 401")) {
			n.Add(1)
		}
	}
}
