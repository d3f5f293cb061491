package presence

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
)

// Answers sent straight from raw bytes, for requests that never reach a
// handler because sipgo cannot read them: a datagram cut short by its read
// buffer, a stream request without a usable Content-Length. They carry
// the request's Via, From, To, Call-ID and CSeq, so the peer can match
// them, and no dialog state is kept.

// rawHeaders are the header names (long and compact forms) a stateless
// response copies from its request.
var rawHeaders = [][]byte{[]byte("via"), []byte("v"), []byte("from"), []byte("f"), []byte("to"), []byte("t"),
	[]byte("call-id"), []byte("i"), []byte("cseq")}

// isRawRequest reports whether data starts with a request line (not a
// response, not noise).
func isRawRequest(data []byte) bool {
	line, _, _ := bytes.Cut(data, []byte("\r\n"))
	return !bytes.HasPrefix(line, []byte("SIP/")) && bytes.HasSuffix(line, []byte(" SIP/2.0")) && bytes.IndexByte(line, ' ') > 0
}

// rawResponse renders a response to the request whose head is in data. It
// returns nil when data holds no request or lacks the headers a response
// needs (Via, Call-ID, CSeq), or when the request is an ACK.
func rawResponse(data []byte, code int, reason, server string) []byte {
	if !isRawRequest(data) || bytes.HasPrefix(data, []byte("ACK ")) {
		return nil
	}
	head, _, _ := bytes.Cut(data, []byte("\r\n\r\n"))
	_, rest, _ := bytes.Cut(head, []byte("\r\n"))
	out := make([]byte, 0, 512)
	out = append(out, "SIP/2.0 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	out = append(out, reason...)
	out = append(out, "\r\n"...)
	var via, callID, cseq bool
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(line) > 4096 {
			continue
		}
		name = bytes.ToLower(bytes.TrimSpace(name))
		for _, h := range rawHeaders {
			if bytes.Equal(name, h) {
				out = append(out, line...)
				out = append(out, "\r\n"...)
				switch string(h) {
				case "via", "v":
					via = true
				case "call-id", "i":
					callID = true
				case "cseq":
					cseq = true
				}
			}
		}
	}
	if !via || !callID || !cseq {
		return nil
	}
	out = append(out, "Server: "...)
	out = append(out, server...)
	out = append(out, "\r\nContent-Length: 0\r\n\r\n"...)
	return out
}

// replyDatagram answers the request in a datagram sipgo cannot read,
// from the UDP listener it came in on.
func (s *Server) replyDatagram(local, remote net.Addr, data []byte, code int, reason string) {
	res := rawResponse(data, code, reason, s.opt.UserAgent)
	ra, ok := remote.(*net.UDPAddr)
	if res == nil || !ok {
		return
	}
	for _, c := range s.udpConns {
		if c.LocalAddr().String() == local.String() {
			to := ra.AddrPort()
			_, _ = c.WriteToUDPAddrPort(res, netip.AddrPortFrom(to.Addr(), to.Port()))
			s.opt.Metrics.Response(rawMethod(data), code)
			return
		}
	}
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
	head, body, framed := bytes.Cut(data, []byte("\r\n\r\n"))
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
	_, rest, _ := bytes.Cut(head, []byte("\r\n"))
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
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
