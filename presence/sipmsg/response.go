package sipmsg

import (
	"net/netip"
	"strconv"
	"strings"
)

// AppendResponse appends to dst the status line of a response to req and
// the headers it copies from req (RFC 3261 §8.2.6.2): every Via, in order,
// the top one with received and rport filled in (§18.2.1, RFC 3581), From,
// To, Call-ID and CSeq. A To without a tag gets toTag, or when toTag is ""
// a tag drawn from the Call-ID (StableTag), so that every retransmission
// gets the same one; a 100 gets none. Add headers with AppendHeader and
// end with AppendBody.
func AppendResponse(dst []byte, req *Request, code int, reason, toTag string) []byte {
	dst = append(dst, "SIP/2.0 "...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	dst = append(dst, reason...)
	dst = append(dst, "\r\n"...)
	top := true
	for v := range req.Values(Via) {
		dst = append(dst, "Via: "...)
		if top {
			dst = appendTopVia(dst, v, req.Peer)
			top = false
		} else {
			dst = append(dst, v...)
		}
		dst = append(dst, "\r\n"...)
	}
	from, _ := req.Get(From)
	dst = AppendHeader(dst, "From", from)
	to, _ := req.Get(To)
	dst = append(dst, "To: "...)
	dst = append(dst, to...)
	if code > 100 && req.To.Tag() == "" {
		if toTag == "" {
			toTag = StableTag(req.CallID)
		}
		dst = append(dst, ";tag="...)
		dst = append(dst, toTag...)
	}
	dst = append(dst, "\r\n"...)
	dst = AppendHeader(dst, "Call-ID", req.CallID)
	dst = append(dst, "CSeq: "...)
	dst = strconv.AppendUint(dst, uint64(req.CSeq), 10)
	dst = append(dst, ' ')
	dst = append(dst, req.CSeqMethod...)
	return append(dst, "\r\n"...)
}

// appendTopVia appends the top Via value with received and rport set for
// a request that came from peer: rport gets its value when the client
// asked for it (RFC 3581 §4, which then always adds received), received
// is added when the sent-by host is not the address the request came
// from (RFC 3261 §18.2.1).
func appendTopVia(dst []byte, v string, peer netip.AddrPort) []byte {
	if !peer.IsValid() {
		return append(dst, v...)
	}
	hop, err := ParseVia(v)
	if err != nil {
		return append(dst, v...)
	}
	rport, hasRport := hop.Params.Get("rport")
	wantRport := hasRport && rport == ""
	_, hasReceived := hop.Params.Get("received")
	ip := peer.Addr().Unmap()
	host := strings.Trim(hop.Host, "[]")
	sameHost := false
	if a, err := netip.ParseAddr(host); err == nil {
		sameHost = a.Unmap() == ip
	}
	addReceived := !hasReceived && (wantRport || !sameHost)
	if !wantRport {
		dst = append(dst, v...)
	} else {
		// Write the value again, rport with its port.
		base := v[:len(v)-len(hop.Params)]
		dst = append(dst, base...)
		for p := string(hop.Params); p != ""; {
			p = strings.TrimLeft(p, "; \t")
			end := paramEnd(p)
			param := p[:end]
			p = p[end:]
			if param == "" {
				continue
			}
			dst = append(dst, ';')
			if n, _, _ := strings.Cut(param, "="); strings.EqualFold(strings.TrimSpace(n), "rport") {
				dst = append(dst, "rport="...)
				dst = strconv.AppendUint(dst, uint64(peer.Port()), 10)
				continue
			}
			dst = append(dst, param...)
		}
	}
	if addReceived {
		dst = append(dst, ";received="...)
		dst = ip.AppendTo(dst)
	}
	return dst
}

// AppendHeader appends one header line.
func AppendHeader(dst []byte, name, value string) []byte {
	dst = append(dst, name...)
	dst = append(dst, ": "...)
	dst = append(dst, value...)
	return append(dst, "\r\n"...)
}

// AppendBody ends a message: Content-Type when there is a body,
// Content-Length, the blank line and the body.
func AppendBody(dst []byte, contentType string, body []byte) []byte {
	if len(body) > 0 && contentType != "" {
		dst = AppendHeader(dst, "Content-Type", contentType)
	}
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, body...)
}

// StableTag is the To tag a response carries when the request had none
// and no dialog is made: drawn from the Call-ID, so that retransmissions
// and stateless answers agree.
func StableTag(callID string) string {
	h := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(callID); i++ {
		h ^= uint64(callID[i])
		h *= 1099511628211
	}
	return "ll" + strconv.FormatUint(h, 36)
}
