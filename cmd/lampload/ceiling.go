package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// The ceiling run measures the set-up against a server that does nothing
// but answer: each SUBSCRIBE gets its 200 and a NOTIFY built from the
// request's own headers, without parsing beyond what the phones' parser
// reads, without state, without a file. It runs as a process of its own
// (this binary started again with -answer-only), as Lamplighter does, so
// the rate it reaches is what the phones, the kernel's loopback and the
// machine's cores allow, and Lamplighter's set-up rate can be read as a
// share of it.

// ceilingResult is the set-up against the answer-only server.
type ceilingResult struct {
	Machine machineInfo `json:"machine"`
	Run     runInfo     `json:"run"`
	Phones  int         `json:"phones"`
	Setup   setupResult `json:"setup"`
}

func (r *ceilingResult) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Answer-only server (the load tool's ceiling): %d subscriptions from %d phones (%.0f%% TCP)\n",
		r.Run.Subscriptions, r.Phones, 100*r.Run.TCPShare)
	fmt.Fprintf(tw, "machine: %s, %d cores, %d MiB, %s\n\n", r.Machine.CPU, r.Machine.Cores, r.Machine.MemoryMB, r.Machine.Go)
	fmt.Fprintf(tw, "subscription set-up\t%.0f/s (%d ok, %d failed, %d missing, %d retransmitted; all first NOTIFYs by %.2f s)\n",
		r.Setup.PerSecond, r.Setup.OK, r.Setup.Failed, r.Setup.Missing, r.Setup.Retransmissions, r.Setup.FirstNotifySeconds)
	if r.Setup.ServerCPUMicros > 0 {
		fmt.Fprintf(tw, "  CPU per set-up\tserver %.1f µs, phones %.1f µs\n", r.Setup.ServerCPUMicros, r.Setup.PhonesCPUMicros)
	}
	tw.Flush()
}

// runCeiling sets up o.subs subscriptions against the answer-only server.
func runCeiling(ctx context.Context, o options, stderr io.Writer) (*ceilingResult, error) {
	say := progress{stderr}.say
	base := newResult(o)
	res := &ceilingResult{Machine: base.Machine, Run: base.Run}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.CommandContext(ctx, self, "-answer-only", addr)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("answer-only server said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			return nil, err
		}
	case <-time.After(10 * time.Second):
		return nil, errors.New("answer-only server not ready within 10 s")
	}

	users, _ := makeUsers(o.users, 0)
	ps := newPhones(addr)
	defer func() {
		for _, p := range ps.list {
			p.close()
		}
	}()
	subs, err := buildSubs(ctx, ps, o, o.subs, func(i int) *user { return users[i%len(users)] })
	if err != nil {
		return nil, err
	}
	ps.seal()
	res.Phones = len(ps.list)
	rctx, stopRetransmit := context.WithCancel(ctx)
	defer stopRetransmit()
	go ps.retransmit(rctx, o.expires)
	say("setting up %d subscriptions from %d phones against the answer-only server", len(subs), res.Phones)
	serverCPU, phonesCPU := cpuSeconds(cmd.Process.Pid), cpuSeconds(os.Getpid())
	res.Setup = setUp(ctx, ps, subs, o.window, o.expires, 0)
	if res.Setup.OK > 0 {
		res.Setup.ServerCPUMicros = (cpuSeconds(cmd.Process.Pid) - serverCPU) / float64(res.Setup.OK) * 1e6
		res.Setup.PhonesCPUMicros = (cpuSeconds(os.Getpid()) - phonesCPU) / float64(res.Setup.OK) * 1e6
	}
	if res.Setup.Error != "" {
		return res, errors.New(res.Setup.Error)
	}
	return res, nil
}

// answerOnly serves addr (UDP and TCP) until ctx ends: every SUBSCRIBE is
// answered 200 and followed by a NOTIFY; everything else is ignored.
func answerOnly(ctx context.Context, addr string) error {
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	defer udp.Close()
	uc := udp.(*net.UDPConn)
	_ = uc.SetReadBuffer(4 << 20)
	_ = uc.SetWriteBuffer(4 << 20)
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer tcp.Close()
	fmt.Println("ready")
	var seq atomic.Uint64
	local := uc.LocalAddr().String()
	for range 2 { // as many readers as Lamplighter has on two cores
		go func() {
			buf := make([]byte, 65536)
			out := make([]byte, 0, 2048)
			for {
				n, from, err := uc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				m, _, err := parseMessage(buf[:n])
				if err != nil || string(m.method) != "SUBSCRIBE" {
					continue
				}
				out = answerSubscribe(out[:0], &m, seq.Add(1), "UDP", local)
				_, _ = uc.WriteToUDPAddrPort(out[:okLen(out)], from) // the 200 and the NOTIFY: two datagrams
				_, _ = uc.WriteToUDPAddrPort(out[okLen(out):], from)
			}
		}()
	}
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				local := c.LocalAddr().String()
				var mu sync.Mutex // one writer: nothing to share
				_ = readStream(c, &mu, func(m *message, _ time.Time, out []byte) []byte {
					if string(m.method) != "SUBSCRIBE" {
						return out
					}
					return answerSubscribe(out, m, seq.Add(1), "TCP", local)
				})
			}()
		}
	}()
	<-ctx.Done()
	return nil
}

// okLen is the length of the 200 answerSubscribe put first in b (it
// carries no body).
func okLen(b []byte) int {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return len(b)
	}
	return i + 4
}

// answerSubscribe appends the 200 to m and a NOTIFY of an idle state in
// the new dialog, as a presence server's first NOTIFY is.
func answerSubscribe(out []byte, m *message, n uint64, transport, local string) []byte {
	tag := "as" + strconv.FormatUint(n, 10)
	to := append(append([]byte{}, m.to...), ";tag="+tag...)
	out = append(out, "SIP/2.0 200 OK\r\n"...)
	for _, v := range m.vias {
		out = appendHeader(out, "Via", v)
	}
	out = appendHeader(out, "From", m.from)
	out = appendHeader(out, "To", to)
	out = appendHeader(out, "Call-ID", m.callID)
	out = appendHeader(out, "CSeq", m.cseq)
	out = append(out, "Contact: <sip:lampload@"+local+">\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"...)
	body := "<?xml version=\"1.0\"?>\r\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"0\" state=\"full\" entity=\"sip:user@lampload\">\r\n" +
		"<dialog id=\"x\"><state>terminated</state></dialog>\r\n<phonestate>idle</phonestate>\r\n</dialog-info>\r\n"
	out = append(out, "NOTIFY sip:phone@lampload SIP/2.0\r\nVia: SIP/2.0/"+transport+" "+local+";branch=z9hG4bK-as"+strconv.FormatUint(n, 10)+"\r\n"...)
	out = appendHeader(out, "From", to)
	out = appendHeader(out, "To", m.from)
	out = appendHeader(out, "Call-ID", m.callID)
	out = append(out, "CSeq: 1 NOTIFY\r\nMax-Forwards: 70\r\nEvent: dialog\r\nSubscription-State: active;expires=3600\r\n"+
		"Content-Type: application/dialog-info+xml\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body...)
	return out
}
