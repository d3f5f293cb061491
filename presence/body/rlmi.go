package body

import "strconv"

// Resource lists (RFC 4662): one NOTIFY for a whole list carries a
// multipart/related body whose first part is an RLMI document naming
// each member, and one part per member in the package's own type.

// Media types of a list NOTIFY.
const (
	TypeRLMI             = "application/rlmi+xml"
	TypeMultipartRelated = "multipart/related"
)

// Resource is one member of a list in an RLMI document.
type Resource struct {
	URI  string // the member's URI: the list's with the member's user part
	Name string // what a phone may label its key with
	// Instance is the member's instance id: the same in every NOTIFY of
	// the subscription (RFC 4662 §5.2), so a phone may key on it.
	Instance string
	State    string // active, pending or terminated
	Reason   string // for terminated: why (RFC 4662 §5.2)
	CID      string // the Content-ID of the member's part, without <>; "" for none
}

// RLMI appends a list document: the list's URI and name, its version
// (one more with every NOTIFY), whether it is the whole list, and the
// resources it carries.
func RLMI(dst []byte, uri, name string, version uint32, full bool, rs []Resource) []byte {
	dst = append(dst, xmlDecl...)
	dst = append(dst, `<list xmlns="urn:ietf:params:xml:ns:rlmi" uri="`...)
	dst = esc(dst, uri)
	dst = append(dst, `" version="`...)
	dst = strconv.AppendUint(dst, uint64(version), 10)
	if full {
		dst = append(dst, `" fullState="true">`+"\n"...)
	} else {
		dst = append(dst, `" fullState="false">`+"\n"...)
	}
	if name != "" {
		dst = append(dst, " <name>"...)
		dst = esc(dst, name)
		dst = append(dst, "</name>\n"...)
	}
	for i := range rs {
		r := &rs[i]
		dst = append(dst, ` <resource uri="`...)
		dst = esc(dst, r.URI)
		dst = append(dst, "\">\n"...)
		if r.Name != "" {
			dst = append(dst, "  <name>"...)
			dst = esc(dst, r.Name)
			dst = append(dst, "</name>\n"...)
		}
		dst = append(dst, `  <instance id="`...)
		dst = esc(dst, r.Instance)
		dst = append(dst, `" state="`...)
		dst = esc(dst, r.State)
		if r.Reason != "" {
			dst = append(dst, `" reason="`...)
			dst = esc(dst, r.Reason)
		}
		if r.CID != "" {
			dst = append(dst, `" cid="`...)
			dst = esc(dst, r.CID)
		}
		dst = append(dst, "\"/>\n </resource>\n"...)
	}
	return append(dst, "</list>\n"...)
}

// MultipartType is the Content-Type of a list NOTIFY's body with the
// given boundary (RFC 4662 §5.1: type names the root, the RLMI part).
func MultipartType(dst []byte, boundary string) []byte {
	dst = append(dst, TypeMultipartRelated+`;type="`+TypeRLMI+`";boundary=`...)
	return append(dst, boundary...)
}

// AppendPart appends one body part of a multipart body (RFC 2046): the
// boundary line, Content-ID, Content-Type and Content-Length, and the
// content. The first part starts the body with an empty preamble line,
// as Asterisk's lists do, which every parser seen takes.
func AppendPart(dst []byte, boundary, cid, contentType string, content []byte) []byte {
	dst = append(dst, "\r\n--"...)
	dst = append(dst, boundary...)
	dst = append(dst, "\r\nContent-ID: <"...)
	dst = append(dst, cid...)
	dst = append(dst, ">\r\nContent-Type: "...)
	dst = append(dst, contentType...)
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(content)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, content...)
}

// EndParts closes a multipart body.
func EndParts(dst []byte, boundary string) []byte {
	dst = append(dst, "\r\n--"...)
	dst = append(dst, boundary...)
	return append(dst, "--\r\n"...)
}
