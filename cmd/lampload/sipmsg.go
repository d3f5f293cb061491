package main

import (
	"bytes"
	"errors"
	"strconv"
)

// message is a SIP message parsed just as far as a simulated phone needs:
// enough to match it to a subscription and to answer it. Its byte slices
// point into the buffer it was parsed from.
type message struct {
	method   []byte // requests
	status   int    // responses
	vias     [][]byte
	from, to []byte
	callID   []byte
	cseq     []byte
	cseqNum  uint32
	subState []byte
	// retryAfter is a response's Retry-After in seconds (0: none).
	retryAfter int
	etag       []byte // a PUBLISH response's SIP-ETag
	body       []byte
}

var (
	errShort     = errors.New("incomplete message")
	errMalformed = errors.New("malformed message")
	crlf         = []byte("\r\n")
)

// parseMessage parses the first message in b and returns how many bytes
// it took (for stream transports); errShort means more bytes are needed.
func parseMessage(b []byte) (message, int, error) {
	var m message
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return m, 0, errShort
	}
	head := b[:end]
	line, rest, _ := bytes.Cut(head, crlf)
	if bytes.HasPrefix(line, []byte("SIP/2.0 ")) {
		if len(line) < 11 {
			return m, 0, errMalformed
		}
		code, err := strconv.Atoi(string(line[8:11]))
		if err != nil {
			return m, 0, errMalformed
		}
		m.status = code
	} else {
		sp := bytes.IndexByte(line, ' ')
		if sp <= 0 {
			return m, 0, errMalformed
		}
		m.method = line[:sp]
	}
	length := 0
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, crlf)
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := bytes.TrimSpace(line[:colon])
		value := bytes.TrimSpace(line[colon+1:])
		switch {
		case headerIs(name, "Via", "v"):
			m.vias = append(m.vias, value)
		case headerIs(name, "From", "f"):
			m.from = value
		case headerIs(name, "To", "t"):
			m.to = value
		case headerIs(name, "Call-ID", "i"):
			m.callID = value
		case headerIs(name, "CSeq", ""):
			m.cseq = value
			num, _, _ := bytes.Cut(value, []byte(" "))
			n, _ := strconv.ParseUint(string(num), 10, 32)
			m.cseqNum = uint32(n)
		case headerIs(name, "Subscription-State", ""):
			m.subState = value
		case headerIs(name, "SIP-ETag", ""):
			m.etag = value
		case headerIs(name, "Retry-After", ""):
			secs, _, _ := bytes.Cut(value, []byte(" "))
			m.retryAfter, _ = strconv.Atoi(string(secs))
		case headerIs(name, "Content-Length", "l"):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 {
				return m, 0, errMalformed
			}
			length = n
		}
	}
	total := end + 4 + length
	if len(b) < total {
		return m, 0, errShort
	}
	m.body = b[end+4 : total]
	return m, total, nil
}

// headerIs tells whether name is the header long (any case) or its
// compact form; the length is compared first, as most names are not.
func headerIs(name []byte, long, compact string) bool {
	if len(name) == len(long) {
		return bytes.EqualFold(name, []byte(long))
	}
	return len(name) == 1 && len(compact) == 1 && name[0]|0x20 == compact[0]
}

// isSubscribe tells whether the message's CSeq method is SUBSCRIBE.
func (m *message) isSubscribe() bool { return bytes.HasSuffix(m.cseq, []byte("SUBSCRIBE")) }

// appendResponse appends a response to request m with the given status
// line, copying Via, From, To, Call-ID and CSeq.
func appendResponse(dst []byte, m *message, statusLine string) []byte {
	dst = append(dst, "SIP/2.0 "...)
	dst = append(dst, statusLine...)
	dst = append(dst, "\r\n"...)
	for _, v := range m.vias {
		dst = append(dst, "Via: "...)
		dst = append(dst, v...)
		dst = append(dst, "\r\n"...)
	}
	dst = appendHeader(dst, "From", m.from)
	dst = appendHeader(dst, "To", m.to)
	dst = appendHeader(dst, "Call-ID", m.callID)
	dst = appendHeader(dst, "CSeq", m.cseq)
	return append(dst, "Content-Length: 0\r\n\r\n"...)
}

func appendHeader(dst []byte, name string, value []byte) []byte {
	dst = append(dst, name...)
	dst = append(dst, ": "...)
	dst = append(dst, value...)
	return append(dst, "\r\n"...)
}

// phoneState returns the phonestate element's value in a PIDF or
// dialog-info body ("idle", "ringing", "busy"…), or "".
func phoneState(body []byte) string {
	const open = "phonestate>"
	i := bytes.Index(body, []byte(open))
	if i < 0 {
		return ""
	}
	v := body[i+len(open):]
	j := bytes.IndexByte(v, '<')
	if j < 0 {
		return ""
	}
	switch string(v[:j]) { // no allocation for the known values
	case "idle":
		return "idle"
	case "ringing":
		return "ringing"
	case "busy":
		return "busy"
	case "held":
		return "held"
	}
	return string(v[:j])
}

// roundOf reads the publisher's round from a NOTIFY body
// ("lampload-round-N"), 0 when it names none.
func roundOf(body []byte) int {
	const mark = "lampload-round-"
	i := bytes.Index(body, []byte(mark))
	if i < 0 {
		return 0
	}
	n := 0
	for _, c := range body[i+len(mark):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}
