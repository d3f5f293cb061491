package presence

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Answers sent straight from raw bytes, for requests that never reach a
// handler: one sipmsg cannot read, a datagram too large, a stream request
// without a usable Content-Length, one shed under overload. They carry
// the request's Via, From, To, Call-ID and CSeq, so the peer can match
// them, and no dialog state is kept.

// rawHeaders are the header names (long and compact forms) a stateless
// response copies from its request.
var rawHeaders = [][]byte{[]byte("via"), []byte("v"), []byte("from"), []byte("f"), []byte("to"), []byte("t"),
	[]byte("call-id"), []byte("i"), []byte("cseq")}

// isRawRequest reports whether data starts with a request line (not a
// response, not noise).
func isRawRequest(data []byte) bool {
	line, _ := sipmsg.CutLine(data)
	return !bytes.HasPrefix(line, []byte("SIP/")) && bytes.HasSuffix(line, []byte(" SIP/2.0")) && bytes.IndexByte(line, ' ') > 0
}

// rawResponse renders a response to the request whose head is in data,
// with the extra header lines given. It returns nil when data holds no
// request or lacks the headers a response needs (Via, Call-ID, CSeq), or
// when the request is an ACK. A To without a tag gets one (RFC 3261
// §8.2.6.2), the same for every retransmission of the request: it is
// drawn from the Call-ID (sipmsg.StableTag, as the handlers' answers).
func rawResponse(data []byte, code int, reason, server string, extra ...string) []byte {
	if !isRawRequest(data) || bytes.HasPrefix(data, []byte("ACK ")) {
		return nil
	}
	head, _, _ := sipmsg.CutHead(data)
	_, rest := sipmsg.CutLine(head)
	var lines [][]byte
	var to, callID []byte
	var via, cseq bool
	for len(rest) > 0 {
		var line []byte
		line, rest = sipmsg.CutLine(rest)
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(line) > 4096 {
			continue
		}
		name = bytes.ToLower(bytes.TrimSpace(name))
		for _, h := range rawHeaders {
			if !bytes.Equal(name, h) {
				continue
			}
			switch string(h) {
			case "via", "v":
				via = true
			case "call-id", "i":
				callID = bytes.TrimSpace(value)
			case "cseq":
				cseq = true
			case "to", "t":
				to = line
				continue
			}
			lines = append(lines, line)
		}
	}
	if !via || callID == nil || !cseq || to == nil {
		return nil
	}
	out := make([]byte, 0, 512)
	out = append(out, "SIP/2.0 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	out = append(out, reason...)
	out = append(out, "\r\n"...)
	for _, l := range lines {
		out = append(out, l...)
		out = append(out, "\r\n"...)
	}
	out = append(out, to...)
	if !bytes.Contains(bytes.ToLower(to), []byte(";tag=")) {
		out = append(out, ";tag="...)
		out = append(out, sipmsg.StableTag(string(callID))...)
	}
	out = append(out, "\r\n"...)
	for _, e := range extra {
		out = append(out, e...)
		out = append(out, "\r\n"...)
	}
	out = append(out, "Server: "...)
	out = append(out, server...)
	out = append(out, "\r\nContent-Length: 0\r\n\r\n"...)
	return out
}

// answerDatagram answers the request in data statelessly from conn, the
// UDP listener it came in on, with the extra header lines given; it
// reports whether an answer could be made (data held a request).
func (s *Server) answerDatagram(conn *net.UDPConn, to netip.AddrPort, data []byte, code int, reason string, extra ...string) bool {
	res := rawResponse(data, code, reason, s.opt.UserAgent, extra...)
	if res == nil {
		return false
	}
	_, _ = conn.WriteToUDPAddrPort(res, to)
	s.opt.Metrics.Response(methodLabel(rawMethod(data)), code)
	return true
}

// rawMethod is the method of the request line in data.
func rawMethod(data []byte) string {
	m, _, _ := bytes.Cut(data, []byte(" "))
	if len(m) > 16 {
		return ""
	}
	return string(m)
}

// badContentLength checks a request's Content-Length against what
// follows its head: in a datagram the length must be a number and no
// more than the bytes that came (RFC 3261 §18.3). It returns the reason
// phrase of the 400 to send, or "".
func badContentLength(data []byte) string {
	head, body, framed := sipmsg.CutHead(data)
	if !framed {
		return ""
	}
	v, found := rawContentLength(head)
	if !found {
		return "" // a datagram is framed by itself
	}
	n, err := strconv.ParseUint(string(v), 10, 31)
	switch {
	case err != nil:
		return "Bad Content-Length"
	case int(n) > len(body):
		return "Content-Length Beyond The Datagram"
	}
	return ""
}

// rawContentLength finds the Content-Length (or l) header's value in a
// message head.
func rawContentLength(head []byte) (value []byte, found bool) {
	_, rest := sipmsg.CutLine(head)
	for len(rest) > 0 {
		var line []byte
		line, rest = sipmsg.CutLine(rest)
		name, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		if bytes.EqualFold(name, []byte("content-length")) || bytes.EqualFold(name, []byte("l")) {
			return bytes.TrimSpace(v), true
		}
	}
	return nil, false
}
