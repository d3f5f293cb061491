package durable

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/lamplighter/lamplighter/presence"
)

// appendSubscription appends the JSON record of a subscription, the same
// document encoding/json writes for it (and reads back) but written
// directly: subscriptions are saved in bulk when many phones subscribe at
// once, and reflection was most of the cost of saving them.
func appendSubscription(dst []byte, r *presence.SavedSubscription) []byte {
	dst = append(dst, '{')
	dst = appendField(dst, "id", r.ID, false, true)
	dst = appendField(dst, "call_id", r.CallID, false, false)
	dst = appendField(dst, "remote_tag", r.RemoteTag, false, false)
	dst = appendField(dst, "user", r.UserID, false, false)
	dst = appendField(dst, "list", r.List, true, false)
	dst = appendField(dst, "entity", r.Entity, false, false)
	dst = append(dst, `,"package":`...)
	dst = appendString(dst, string(r.Package))
	dst = appendField(dst, "event_id", r.EventID, true, false)
	dst = appendField(dst, "accept", r.Accept, true, false)
	dst = appendField(dst, "local_uri", r.LocalURI, false, false)
	dst = appendField(dst, "remote_uri", r.RemoteURI, false, false)
	dst = appendField(dst, "target", r.Target, false, false)
	if len(r.Routes) > 0 {
		dst = append(dst, `,"routes":[`...)
		for i, rt := range r.Routes {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, rt)
		}
		dst = append(dst, ']')
	}
	dst = appendField(dst, "transport", r.Transport, false, false)
	dst = appendField(dst, "source", r.Source, false, false)
	dst = appendField(dst, "watcher", r.Watcher, true, false)
	dst = appendField(dst, "grant", r.Grant, true, false)
	dst = appendField(dst, "user_agent", r.UserAgent, true, false)
	if r.Single {
		dst = append(dst, `,"single":true`...)
	}
	dst = append(dst, `,"expires":"`...)
	dst = r.Expires.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","remote_cseq":`...)
	dst = strconv.AppendUint(dst, uint64(r.RemoteCSeq), 10)
	dst = append(dst, `,"cseq":`...)
	dst = strconv.AppendUint(dst, uint64(r.CSeq), 10)
	dst = append(dst, `,"version":`...)
	dst = strconv.AppendUint(dst, uint64(r.Version), 10)
	return append(dst, '}')
}

// appendField appends "name":"value" (after a comma unless first); with
// omitEmpty an empty value is left out.
func appendField(dst []byte, name, value string, omitEmpty, first bool) []byte {
	if omitEmpty && value == "" {
		return dst
	}
	if !first {
		dst = append(dst, ',')
	}
	dst = append(dst, '"')
	dst = append(dst, name...)
	dst = append(dst, `":`...)
	return appendString(dst, value)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string as encoding/json writes it:
// control characters and <, >, & escaped, invalid UTF-8 as U+FFFD, and
// U+2028/U+2029 escaped.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
