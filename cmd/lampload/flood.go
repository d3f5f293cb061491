package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// floodResult is what an unauthenticated flood cost while the watchers'
// latency was measured: the issue's "100,000 unauthenticated SUBSCRIBEs
// from one address in 10 s".
type floodResult struct {
	Sent       int           `json:"sent"`
	Challenged int64         `json:"challenged_401"`
	Seconds    float64       `json:"seconds"`
	Before     memory        `json:"before"`
	After      memory        `json:"after"`
	RSSGrowth  int64         `json:"rss_growth_bytes"`
	Latency    latencyResult `json:"latency_during"`
	Error      string        `json:"error,omitempty"`
}

// floodSource is the address the flood comes from: loopback, but not the
// phones' 127.0.0.1, which the config trusts.
var floodSource = net.IPv4(127, 0, 0, 2)

// measureFlood sends n SUBSCRIBEs without credentials, each with its own
// Call-ID, from one untrusted address, evenly over d, while PBX events go
// on at rate for the well-behaved watchers; it reads memory before and
// after, settled (see settledMemory).
func measureFlood(ctx context.Context, t *target, c *changes, p *pbx, users []*user, n int, d time.Duration, rate float64) floodResult {
	var r floodResult
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
	var challenged atomic.Int64
	go func() {
		buf := make([]byte, 65536)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			if strings.HasPrefix(string(buf[:min(k, 12)]), "SIP/2.0 401") {
				challenged.Add(1)
			}
		}
	}()
	local := conn.LocalAddr().(*net.UDPAddr)
	fctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	lat := make(chan latencyResult, 1)
	go func() { lat <- measureLatency(fctx, c, p, users, rate, d) }()
	start := time.Now()
	const batch = 100
	// Written into one reused buffer: the flood generator shares the
	// process (and its collector) with the phones whose latency is
	// measured meanwhile, so it must not make garbage of its own.
	host, self := local.IP.String(), local.String()
	runID := strconv.FormatInt(start.UnixNano(), 10)
	msg := make([]byte, 0, 1024)
	for i := 0; i < n && fctx.Err() == nil; i++ {
		ext := users[i%len(users)].ext
		msg = append(msg[:0], "SUBSCRIBE sip:"...)
		msg = append(msg, ext...)
		msg = append(msg, '@')
		msg = append(msg, t.sipAddr...)
		msg = append(msg, " SIP/2.0\r\nVia: SIP/2.0/UDP "...)
		msg = append(msg, self...)
		msg = append(msg, ";branch=z9hG4bKflood"...)
		msg = strconv.AppendInt(msg, int64(i), 10)
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
		msg = append(msg, ">\r\nEvent: dialog\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"...)
		if _, err := conn.WriteToUDPAddrPort(msg, server); err == nil {
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
