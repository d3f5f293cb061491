// Package sipmsg reads SIP requests straight from the bytes that carried
// them and writes responses to them (RFC 3261 §7, §8.2.6, §20). It is the
// request path of Lamplighter's presence server: one copy of the message,
// header values as substrings of it, no parse tree and no allocation per
// header; addresses and URIs are read only when a handler asks.
package sipmsg

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// Key names a header the presence server reads; compact forms (RFC 3261
// §7.3.3, RFC 6665 for Event) map to the same key.
type Key uint8

// The headers known by key; any other is found by name.
const (
	Other Key = iota
	Via
	From
	To
	CallID
	CSeq
	Contact
	Expires
	Event
	Accept
	ContentType
	ContentLength
	Authorization
	ProxyAuthorization
	RecordRoute
	UserAgent
	SIPIfMatch
	Supported
	MaxForwards
	Require
	AllowEvents
	Route
)

// keyOf returns the key of a header name, in any case.
func keyOf(name string) Key {
	if len(name) == 1 {
		switch name[0] | 0x20 {
		case 'v':
			return Via
		case 'f':
			return From
		case 't':
			return To
		case 'i':
			return CallID
		case 'm':
			return Contact
		case 'o':
			return Event
		case 'c':
			return ContentType
		case 'l':
			return ContentLength
		case 'k':
			return Supported
		case 'u':
			return AllowEvents
		}
		return Other
	}
	// By length first, so that most names are compared with one
	// candidate at most.
	var cands []keyName
	if len(name) < len(byLength) {
		cands = byLength[len(name)]
	}
	for _, k := range cands {
		if strings.EqualFold(k.name, name) {
			return k.key
		}
	}
	return Other
}

type keyName struct {
	name string
	key  Key
}

// byLength holds the long header names by their length.
var byLength = func() (t [20][]keyName) {
	for _, k := range []keyName{
		{"Via", Via}, {"From", From}, {"To", To}, {"Call-ID", CallID}, {"CSeq", CSeq},
		{"Contact", Contact}, {"Expires", Expires}, {"Event", Event}, {"Accept", Accept},
		{"Content-Type", ContentType}, {"Content-Length", ContentLength},
		{"Authorization", Authorization}, {"Proxy-Authorization", ProxyAuthorization},
		{"Record-Route", RecordRoute}, {"User-Agent", UserAgent}, {"SIP-If-Match", SIPIfMatch},
		{"Supported", Supported}, {"Max-Forwards", MaxForwards}, {"Require", Require},
		{"Allow-Events", AllowEvents}, {"Route", Route},
	} {
		t[len(k.name)] = append(t[len(k.name)], k)
	}
	return t
}()

// Field is one header line: its name as written and its value, trimmed.
type Field struct {
	Name  string
	Value string
	Key   Key
}

// Request is a SIP request read by Parse. Its strings share one copy of
// the message.
type Request struct {
	Method string // as written (methods are case-sensitive)
	URI    URI    // the Request-URI
	Fields []Field
	Body   []byte

	CallID     string
	CSeq       uint32
	CSeqMethod string
	From, To   Address

	// Where the request came from and over what ("UDP", "TCP", "TLS"):
	// set by the transport, used for RFC 3581 received/rport and logs.
	Transport string
	Peer      netip.AddrPort
	Source    string // Peer as host:port

	fields [20]Field // Fields' storage for most requests
}

// Error says why a message is not a request Parse can read; Reason is a
// fitting reason phrase for the 400 (or 413) that answers it.
type Error struct {
	Code   int
	Reason string
}

func (e *Error) Error() string { return "sip: " + strconv.Itoa(e.Code) + " " + e.Reason }

func bad(reason string) error { return &Error{Code: 400, Reason: reason} }

// MaxFields bounds the header lines of a request.
const MaxFields = 256

// ErrNotRequest is returned for what is not a request (a response, noise).
var ErrNotRequest = errors.New("sip: not a request")

// Parse reads a request from data (head, blank line, body). It takes a
// copy of data, so the caller may reuse its buffer. A body longer than its
// Content-Length is cut to it (a datagram may carry padding); one shorter
// is an error. Via, From, To, Call-ID and CSeq must be present and
// readable, and CSeq's method must be the request's.
func Parse(data []byte) (*Request, error) {
	return ParseString(string(data))
}

// ParseString is Parse for a message already held in a string.
func ParseString(msg string) (*Request, error) {
	r := &Request{}
	if err := r.parse(msg); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseInto is ParseString into a Request of the caller's (one kept for
// reuse): r is reset first, and holds nothing of before even on error.
func ParseInto(r *Request, msg string) error {
	*r = Request{}
	return r.parse(msg)
}

// parse reads msg into r, which is zero.
func (r *Request) parse(msg string) error {
	r.Fields = r.fields[:0]
	head, body, found := cutHead(msg)
	if !found {
		return bad("Missing Blank Line")
	}
	line, rest := cutLine(head)
	method, rest1, ok1 := strings.Cut(line, " ")
	uri, version, ok2 := strings.Cut(rest1, " ")
	if !ok1 || !ok2 || !isToken(method) {
		if strings.HasPrefix(line, "SIP/") {
			return ErrNotRequest
		}
		return bad("Bad Request Line")
	}
	if version != "SIP/2.0" {
		return &Error{Code: 505, Reason: "Version Not Supported"}
	}
	r.Method = method
	if k := KnownMethod(method); k != "" {
		r.Method = k
	}
	var err error
	if r.URI, err = ParseURI(uri); err != nil {
		return bad("Bad Request-URI")
	}
	for rest != "" {
		line, rest = cutLine(rest)
		for rest != "" && (rest[0] == ' ' || rest[0] == '\t') { // folded (RFC 3261 §7.3.1)
			var more string
			more, rest = cutLine(rest)
			line += " " + strings.TrimSpace(more)
		}
		name, value, ok := strings.Cut(line, ":")
		name = strings.TrimRight(name, " \t")
		if !ok || !isToken(name) {
			return bad("Bad Header Line")
		}
		if len(r.Fields) == MaxFields {
			return &Error{Code: 413, Reason: "Too Many Headers"}
		}
		r.Fields = append(r.Fields, Field{Name: name, Value: strings.TrimSpace(value), Key: keyOf(name)})
	}
	if err := r.readBody(body); err != nil {
		return err
	}
	return r.readDialogHeaders()
}

// KnownMethod returns the constant for m when it is a method SIP
// defines, else "". A request's Method is that constant, so that it
// refers to no bytes of the message (metrics keep it as a label; the
// bytes may be reused).
func KnownMethod(m string) string {
	for _, c := range [...]string{"SUBSCRIBE", "NOTIFY", "PUBLISH", "REGISTER", "OPTIONS", "INVITE", "ACK",
		"BYE", "CANCEL", "MESSAGE", "INFO", "UPDATE", "PRACK", "REFER"} {
		if m == c {
			return c
		}
	}
	return ""
}

// cutHead splits a message at its first blank line. Lines end in CRLF
// (RFC 3261 §7) or, from some peers, a bare LF, read alike: a blank line
// is "\r\n" or "\n" right after a line end.
func cutHead(msg string) (head, body string, found bool) {
	for i := 0; i < len(msg); {
		j := strings.IndexByte(msg[i:], '\n')
		if j < 0 {
			break
		}
		if j == 0 || j == 1 && msg[i] == '\r' {
			head = strings.TrimSuffix(strings.TrimSuffix(msg[:i], "\n"), "\r")
			return head, msg[i+j+1:], true
		}
		i += j + 1
	}
	return "", "", false
}

// cutLine returns the first line of s (without its CRLF or LF) and the rest.
func cutLine(s string) (line, rest string) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return s, ""
	}
	line, rest = s[:i], s[i+1:]
	return strings.TrimSuffix(line, "\r"), rest
}

func (r *Request) readBody(body string) error {
	v, ok := r.Get(ContentLength)
	if !ok {
		r.Body = []byte(body)[:len(body):len(body)]
		if body == "" {
			r.Body = nil
		}
		return nil
	}
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return bad("Bad Content-Length")
	}
	if int(n) > len(body) {
		return bad("Content-Length Beyond Message")
	}
	if n > 0 {
		r.Body = []byte(body[:n])
	}
	return nil
}

func (r *Request) readDialogHeaders() error {
	// From, To, Call-ID and CSeq identify the request and its dialog:
	// each appears once (RFC 3261 §7.3, §20), and two that differ would
	// make this request another one to the next stack that reads it.
	var seen [ContentLength + 1]bool
	for i := range r.Fields {
		switch k := r.Fields[i].Key; k {
		case From, To, CallID, CSeq, ContentLength:
			if seen[k] {
				return bad("Duplicate " + singletons[k])
			}
			seen[k] = true
		}
	}
	if _, ok := r.Get(Via); !ok {
		return bad("Missing Via")
	}
	for v := range r.Values(Via) {
		if _, err := ParseVia(v); err != nil {
			return err
		}
	}
	var ok bool
	if r.CallID, ok = r.Get(CallID); !ok || r.CallID == "" {
		return bad("Missing Call-ID")
	}
	cseq, ok := r.Get(CSeq)
	if !ok {
		return bad("Missing CSeq")
	}
	num, method, _ := strings.Cut(cseq, " ")
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return bad("Bad CSeq")
	}
	r.CSeq, r.CSeqMethod = uint32(n), strings.TrimSpace(method)
	if r.CSeqMethod != r.Method {
		return bad("CSeq Method Mismatch")
	}
	for _, h := range []struct {
		key  Key
		addr *Address
		miss string
	}{{From, &r.From, "Missing From"}, {To, &r.To, "Missing To"}} {
		v, ok := r.Get(h.key)
		if !ok {
			return bad(h.miss)
		}
		if *h.addr, err = ParseAddress(v); err != nil {
			return bad("Bad " + h.miss[len("Missing "):])
		}
	}
	return nil
}

// singletons names the headers a request may carry only once.
var singletons = map[Key]string{From: "From", To: "To", CallID: "Call-ID", CSeq: "CSeq", ContentLength: "Content-Length"}

// Get returns the value of the first header with key k.
func (r *Request) Get(k Key) (string, bool) {
	for i := range r.Fields {
		if r.Fields[i].Key == k {
			return r.Fields[i].Value, true
		}
	}
	return "", false
}

// Header returns the value of the first header named name (any case,
// compact forms included).
func (r *Request) Header(name string) (string, bool) {
	if k := keyOf(name); k != Other {
		return r.Get(k)
	}
	for i := range r.Fields {
		if strings.EqualFold(r.Fields[i].Name, name) {
			return r.Fields[i].Value, true
		}
	}
	return "", false
}

// Values calls yield with each value of the headers with key k, in order;
// a header line with a comma-separated list gives each element. It stops
// when yield returns false.
func (r *Request) Values(k Key) func(yield func(string) bool) {
	return func(yield func(string) bool) {
		for i := range r.Fields {
			if r.Fields[i].Key != k {
				continue
			}
			for v := range SplitList(r.Fields[i].Value) {
				if !yield(v) {
					return
				}
			}
		}
	}
}

// Has reports whether a header with key k is present.
func (r *Request) Has(k Key) bool {
	_, ok := r.Get(k)
	return ok
}

// SplitList yields the elements of a comma-separated header value
// (RFC 3261 §7.3.1), trimmed; commas inside quotes or angle brackets do
// not separate. Empty elements are skipped.
func SplitList(v string) func(yield func(string) bool) {
	return func(yield func(string) bool) {
		if strings.IndexByte(v, ',') < 0 { // one element, as most are
			if e := strings.TrimSpace(v); e != "" {
				yield(e)
			}
			return
		}
		start, quoted, angle := 0, false, false
		for i := 0; i <= len(v); i++ {
			if i < len(v) {
				switch c := v[i]; {
				case quoted && c == '\\':
					i++
					continue
				case c == '"':
					quoted = !quoted
					continue
				case quoted:
					continue
				case c == '<':
					angle = true
					continue
				case c == '>':
					angle = false
					continue
				case angle || c != ',':
					continue
				}
			}
			if e := strings.TrimSpace(v[start:min(i, len(v))]); e != "" {
				if !yield(e) {
					return
				}
			}
			start = i + 1
		}
	}
}

// isToken reports whether s is a non-empty RFC 3261 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-.!%*_+`'~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
