package sipmsg

import (
	"strconv"
	"strings"
)

// Params are header or URI parameters as written: ";name=value;flag".
type Params string

// Get returns the value of the parameter name (any case) and whether it
// is present; a quoted value is returned without its quotes.
func (p Params) Get(name string) (string, bool) {
	s := string(p)
	for s != "" {
		s = strings.TrimLeft(s, "; \t")
		end := paramEnd(s)
		param := s[:end]
		s = s[end:]
		n, v, _ := strings.Cut(param, "=")
		if strings.EqualFold(strings.TrimSpace(n), name) {
			v = strings.TrimSpace(v)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}

// Without returns the parameters but those named name (any case), each
// as written, with its leading ';'.
func (p Params) Without(name string) string {
	var b strings.Builder
	for s := string(p); s != ""; {
		s = strings.TrimLeft(s, "; \t")
		end := paramEnd(s)
		param := strings.TrimSpace(s[:end])
		s = s[end:]
		n, _, _ := strings.Cut(param, "=")
		if param == "" || strings.EqualFold(strings.TrimSpace(n), name) {
			continue
		}
		b.WriteByte(';')
		b.WriteString(param)
	}
	return b.String()
}

// paramEnd is where the parameter at the start of s ends: at a ';' not in
// quotes, or the end.
func paramEnd(s string) int {
	if i := indexUnquoted(s, ";"); i >= 0 {
		return i
	}
	return len(s)
}

// indexUnquoted returns the index of the first byte of s that is one of
// stops and not inside a quoted string, or -1.
func indexUnquoted(s, stops string) int {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && strings.IndexByte(stops, c) >= 0:
			return i
		}
	}
	return -1
}

// Address is a name-addr or addr-spec with its header parameters (From,
// To, Contact, Record-Route: RFC 3261 §20.10).
type Address struct {
	Display string // as written, quotes included; "" when absent
	URI     URI
	Params  Params // the header's parameters (tag, expires, ...)
}

// Tag returns the address's tag parameter ("" when absent).
func (a Address) Tag() string {
	t, _ := a.Params.Get("tag")
	return t
}

// ParseAddress reads a From, To or Contact value. In the addr-spec form
// (no angle brackets) parameters after the URI belong to the header
// (RFC 3261 §20.10).
func ParseAddress(v string) (Address, error) {
	v = strings.TrimSpace(v)
	var a Address
	var uri string
	if i := addrOpen(v); i >= 0 {
		j := strings.IndexByte(v[i:], '>')
		if j < 0 {
			return a, bad("Bad Address")
		}
		a.Display = strings.TrimSpace(v[:i])
		uri = v[i+1 : i+j]
		a.Params = Params(strings.TrimSpace(v[i+j+1:]))
		if a.Params != "" && a.Params[0] != ';' {
			return a, bad("Bad Address")
		}
	} else {
		uri, a.Params = v, ""
		if k := strings.IndexByte(v, ';'); k >= 0 {
			uri, a.Params = v[:k], Params(v[k:])
		}
	}
	var err error
	a.URI, err = ParseURI(uri)
	return a, err
}

// addrOpen returns the index of the '<' opening a name-addr (outside any
// quoted display name), or -1: a ';' first means an addr-spec.
func addrOpen(v string) int {
	if i := indexUnquoted(v, "<;"); i >= 0 && v[i] == '<' {
		return i
	}
	return -1
}

// URI is a SIP, SIPS or other URI, split where the presence server needs
// it. Raw is the URI exactly as written.
type URI struct {
	Raw    string
	Scheme string // as written; compare without case
	User   string
	Host   string // brackets of an IPv6 reference kept
	Port   int    // 0 when absent
	Params Params // the URI's parameters (transport, maddr, ...)
}

// String returns the URI as written.
func (u URI) String() string { return u.Raw }

// IsSIP reports whether the scheme is sip or sips.
func (u URI) IsSIP() bool {
	return strings.EqualFold(u.Scheme, "sip") || strings.EqualFold(u.Scheme, "sips")
}

// ParseURI reads a URI. For sip and sips the user, host, port and
// parameters are split out (RFC 3261 §19.1.1); for any other scheme
// (tel, urn, ...) only Scheme and Raw are set.
func ParseURI(s string) (URI, error) {
	u := URI{Raw: s}
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok || scheme == "" || !isScheme(scheme) {
		return u, bad("Bad URI")
	}
	u.Scheme = scheme
	if !u.IsSIP() {
		if rest == "" || !uriChars(rest) {
			return u, bad("Bad URI")
		}
		return u, nil
	}
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		rest = rest[:i] // headers: not used here
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		u.User, rest = rest[:at], rest[at+1:]
		if i := strings.IndexByte(u.User, ':'); i >= 0 {
			u.User = u.User[:i] // a password has no business here
		}
	}
	hostport := rest
	if i := strings.IndexByte(rest, ';'); i >= 0 {
		hostport, u.Params = rest[:i], Params(rest[i:])
	}
	var err error
	if u.Host, u.Port, err = splitHostPort(hostport); err != nil {
		return u, err
	}
	return u, nil
}

// splitHostPort reads host[:port], the host a name or an address (IPv6
// in brackets, which are kept).
func splitHostPort(hostport string) (host string, port int, err error) {
	host, p := hostport, ""
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return "", 0, bad("Bad URI")
		}
		host, p = hostport[:end+1], hostport[end+1:]
		if p != "" && p[0] != ':' {
			return "", 0, bad("Bad URI")
		}
		p = strings.TrimPrefix(p, ":")
	} else if i := strings.IndexByte(hostport, ':'); i >= 0 {
		host, p = hostport[:i], hostport[i+1:]
	}
	if host == "" || !hostChars(host) {
		return "", 0, bad("Bad URI")
	}
	if p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return "", 0, bad("Bad URI")
		}
		port = int(n)
	}
	return host, port, nil
}

// hostChars reports whether s has none of the characters that end a
// host or cannot be in one.
func hostChars(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ' ', '\t', '<', '>', '"', '@', ';', ',':
			return false
		}
	}
	return true
}

// uriChars reports whether s has only characters a URI may hold
// (RFC 3986 §2: unreserved, reserved and '%'); quotes, angle brackets,
// spaces and controls end a URI and cannot be in one.
func uriChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~:/?#[]@!$&'()*+,;=%", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i] | 0x20
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (s[i] >= '0' && s[i] <= '9' || s[i] == '+' || s[i] == '-' || s[i] == '.'):
		default:
			return false
		}
	}
	return true
}

// ViaHop is one Via value: the protocol, transport, sent-by and params.
type ViaHop struct {
	Transport string // UDP, TCP, TLS, ... as written
	Host      string
	Port      int // 0 when absent
	Params    Params
}

// Branch returns the branch parameter ("" when absent).
func (v ViaHop) Branch() string {
	b, _ := v.Params.Get("branch")
	return b
}

// ParseVia reads one Via value ("SIP/2.0/UDP host:port;params").
func ParseVia(v string) (ViaHop, error) {
	var h ViaHop
	proto, rest, ok := strings.Cut(strings.TrimSpace(v), "/")
	if !ok || !strings.EqualFold(strings.TrimSpace(proto), "SIP") {
		return h, bad("Bad Via")
	}
	version, rest, ok := strings.Cut(rest, "/")
	if !ok || !isToken(strings.TrimSpace(version)) {
		return h, bad("Bad Via")
	}
	rest = strings.TrimLeft(rest, " \t")
	i := strings.IndexFunc(rest, func(r rune) bool { return r == ' ' || r == '\t' })
	if i <= 0 {
		return h, bad("Bad Via")
	}
	h.Transport, rest = rest[:i], strings.TrimSpace(rest[i:])
	if !isToken(h.Transport) {
		return h, bad("Bad Via")
	}
	sentBy := rest
	if j := strings.IndexByte(rest, ';'); j >= 0 {
		sentBy, h.Params = strings.TrimSpace(rest[:j]), Params(rest[j:])
	}
	var err error
	if h.Host, h.Port, err = splitHostPort(sentBy); err != nil {
		return h, bad("Bad Via")
	}
	return h, nil
}

// TopVia returns the first Via value, read.
func (r *Request) TopVia() (ViaHop, error) {
	for v := range r.Values(Via) {
		return ParseVia(v)
	}
	return ViaHop{}, bad("Missing Via")
}
