package durable

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/lamplighter/lamplighter/presence"
)

// ParseSubscription reads a subscription record: what AppendSubscription
// (or encoding/json) wrote. Records are read in bulk at a restart and
// when a node of a cluster takes another's over, and encoding/json's
// reflection was most of that cost; the direct reader takes what it is
// sure to read as encoding/json does (the records Lamplighter writes) and
// leaves anything else (a key in another case, a null, an escape it does
// not handle) to encoding/json, so that both always agree.
func ParseSubscription(b []byte) (presence.SavedSubscription, error) {
	var r presence.SavedSubscription
	if parseSubscription(b, &r) {
		return r, nil
	}
	r = presence.SavedSubscription{}
	err := json.Unmarshal(b, &r)
	return r, err
}

// AppendSubscription appends the JSON record of a subscription, as
// encoding/json writes it.
func AppendSubscription(dst []byte, r *presence.SavedSubscription) []byte {
	return appendSubscription(dst, r)
}

// recordReader reads one flat JSON object.
type recordReader struct {
	b   []byte
	i   int
	buf []byte // unescaped strings
}

func (p *recordReader) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// take consumes c (after white space), reporting whether it was there.
func (p *recordReader) take(c byte) bool {
	p.space()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a JSON string: false for what it leaves to encoding/json
// (a surrogate escape, invalid UTF-8) and for what is not a string.
func (p *recordReader) str() (string, bool) {
	if !p.take('"') {
		return "", false
	}
	start := p.i
	ascii := true
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			if !ascii && !utf8.Valid(s) {
				return "", false
			}
			return string(s), true
		case c == '\\':
			return p.escaped(start)
		case c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
		p.i++
	}
	return "", false
}

// escaped reads the rest of a string from its first backslash on.
func (p *recordReader) escaped(start int) (string, bool) {
	out := append(p.buf[:0], p.b[start:p.i]...)
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			p.buf = out
			if !utf8.Valid(out) {
				return "", false
			}
			return string(out), true
		case c < 0x20:
			return "", false
		case c != '\\':
			out = append(out, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.b) {
			return "", false
		}
		e := p.b[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if p.i+4 > len(p.b) {
				return "", false
			}
			v, err := strconv.ParseUint(string(p.b[p.i:p.i+4]), 16, 16)
			if err != nil || (v >= 0xd800 && v < 0xe000) {
				return "", false // a surrogate: left to encoding/json
			}
			out = utf8.AppendRune(out, rune(v))
			p.i += 4
		default:
			return "", false
		}
	}
	return "", false
}

// uint32 reads a JSON number that is an unsigned 32-bit integer.
func (p *recordReader) uint32() (uint32, bool) {
	p.space()
	start := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	digits := p.b[start:p.i]
	if len(digits) == 0 || (digits[0] == '0' && len(digits) > 1) {
		return 0, false
	}
	if p.i < len(p.b) {
		switch p.b[p.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	v, err := strconv.ParseUint(string(digits), 10, 32)
	return uint32(v), err == nil
}

// literal consumes a word (true, false).
func (p *recordReader) literal(w string) bool {
	p.space()
	if len(p.b)-p.i >= len(w) && string(p.b[p.i:p.i+len(w)]) == w {
		p.i += len(w)
		return true
	}
	return false
}

// parseSubscription reads a record into r; false leaves it to
// encoding/json (r is then to be discarded).
func parseSubscription(b []byte, r *presence.SavedSubscription) bool {
	p := &recordReader{b: b}
	if !p.take('{') {
		return false
	}
	if p.take('}') {
		return p.end()
	}
	for {
		key, ok := p.str()
		if !ok || !p.take(':') {
			return false
		}
		if !p.field(key, r) {
			return false
		}
		if p.take('}') {
			return p.end()
		}
		if !p.take(',') {
			return false
		}
	}
}

// end reports whether nothing but white space follows.
func (p *recordReader) end() bool {
	p.space()
	return p.i == len(p.b)
}

// field reads the value of one key into r.
func (p *recordReader) field(key string, r *presence.SavedSubscription) bool {
	var dst *string
	switch key {
	case "id":
		dst = &r.ID
	case "call_id":
		dst = &r.CallID
	case "remote_tag":
		dst = &r.RemoteTag
	case "user":
		dst = &r.UserID
	case "list":
		dst = &r.List
	case "entity":
		dst = &r.Entity
	case "event_id":
		dst = &r.EventID
	case "accept":
		dst = &r.Accept
	case "local_uri":
		dst = &r.LocalURI
	case "remote_uri":
		dst = &r.RemoteURI
	case "target":
		dst = &r.Target
	case "transport":
		dst = &r.Transport
	case "source":
		dst = &r.Source
	case "watcher":
		dst = &r.Watcher
	case "grant":
		dst = &r.Grant
	case "user_agent":
		dst = &r.UserAgent
	case "package":
		s, ok := p.str()
		r.Package = presence.Package(s)
		return ok
	case "routes":
		return p.routes(r)
	case "single":
		switch {
		case p.literal("true"):
			r.Single = true
		case p.literal("false"):
			r.Single = false
		default:
			return false
		}
		return true
	case "expires":
		// encoding/json hands time.Time the string as written, escapes
		// and all: one with an escape is left to it.
		start := p.i
		s, ok := p.str()
		return ok && bytes.IndexByte(p.b[start:p.i], '\\') < 0 && r.Expires.UnmarshalText([]byte(s)) == nil
	case "remote_cseq", "cseq", "version":
		v, ok := p.uint32()
		switch key {
		case "remote_cseq":
			r.RemoteCSeq = v
		case "cseq":
			r.CSeq = v
		default:
			r.Version = v
		}
		return ok
	default:
		return false // another key, or one in another case
	}
	s, ok := p.str()
	*dst = s
	return ok
}

// routes reads the route set: an array of strings.
func (p *recordReader) routes(r *presence.SavedSubscription) bool {
	if !p.take('[') {
		return false
	}
	r.Routes = r.Routes[:0]
	if p.take(']') {
		if r.Routes == nil {
			r.Routes = []string{}
		}
		return true
	}
	for {
		s, ok := p.str()
		if !ok {
			return false
		}
		r.Routes = append(r.Routes, s)
		if p.take(']') {
			return true
		}
		if !p.take(',') {
			return false
		}
	}
}
