package body

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/lamplighter/lamplighter/bridge"
)

// Limits on published documents, beyond the byte limit the server applies.
const (
	maxDepth    = 32
	maxElements = 2000
	maxExtra    = 16
	maxNoteLen  = 1024
	// maxExtraBytes bounds what a person's kept elements add to every
	// document, written: with the notes it keeps a NOTIFY well within a
	// UDP datagram whatever a client PUBLISHes.
	maxExtraBytes = 4 << 10
)

// ErrNotPIDF is returned for a well-formed document that is not PIDF.
var ErrNotPIDF = errors.New("not a PIDF presence document")

// ParsePIDF reads a PIDF document a soft client PUBLISHed (Linphone,
// baresip, Snom, Bria…) into a person state: RPID activities (from the
// person element or, as some clients do, a tuple), the person's note or
// else the first tuple or document note, whether every tuple is closed,
// and the person's other elements (mood, place, display name…) kept
// verbatim as self-contained XML so that they survive the merge.
//
// It is namespace-aware, never expands entities (encoding/xml knows only
// the five predefined ones and rejects the rest) and bounds depth, element
// count and note length, so hostile bodies fail fast.
func ParsePIDF(data []byte) (bridge.PersonState, error) {
	var ps bridge.PersonState
	// Namespace-well-formed first (encoding/xml lets repeated attributes
	// and undeclared prefixes through): what watchers get must be.
	if err := checkFragment(data); err != nil {
		return ps, fmt.Errorf("bad PIDF: %w", err)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	dec.CharsetReader = charsetReader
	var (
		path       []xml.Name // open elements
		elements   int
		sawRoot    bool
		tuples     int
		openTuples int
		personNote string
		tupleNote  string
		docNote    string
		note       *string // the note being read
		noteBuf    strings.Builder
		basic      *strings.Builder
		busyText   *strings.Builder // inside <rpid:busy> of the activities
		extraBytes int
	)
	addActivity := func(local string) {
		a := bridge.Activity(local)
		if local == "busy" {
			a = bridge.ActivityBusy
		}
		if a.Valid() && !ps.Has(a) {
			ps.Activities = append(ps.Activities, a)
		}
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return ps, fmt.Errorf("bad PIDF: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			elements++
			if elements > maxElements || len(path) >= maxDepth {
				return ps, errors.New("bad PIDF: document too large or too deep")
			}
			if len(path) == 0 {
				if t.Name.Space != NSPIDF || t.Name.Local != "presence" {
					return ps, ErrNotPIDF
				}
				sawRoot = true
			}
			parent := xml.Name{}
			if len(path) > 0 {
				parent = path[len(path)-1]
			}
			switch {
			case t.Name.Space == NSPIDF && t.Name.Local == "tuple" && len(path) == 1:
				tuples++
			case t.Name.Space == NSPIDF && t.Name.Local == "basic":
				basic = &strings.Builder{}
			case parent.Space == NSRPID && parent.Local == "activities":
				addActivity(t.Name.Local)
				if t.Name.Space == NSRPID && t.Name.Local == "busy" {
					busyText = &strings.Builder{}
				}
			case t.Name.Local == "note" && (t.Name.Space == NSPIDF || t.Name.Space == NSDataModel):
				noteBuf.Reset()
				switch {
				case len(path) == 1 && t.Name.Space == NSPIDF:
					note = &docNote
				case isPerson(parent):
					note = &personNote
				default:
					note = &tupleNote
				}
			case isPerson(parent) && t.Name.Local == "timestamp" && (t.Name.Space == NSPIDF || t.Name.Space == NSDataModel):
				// When the publisher wrote its document is not part of
				// the person: carried on, it made every resend of the
				// same state (Linphone refreshes so) a change for every
				// watcher. Our documents say nothing of when.
				if err := dec.Skip(); err != nil {
					return ps, fmt.Errorf("bad PIDF: %w", err)
				}
				continue
			case isPerson(parent) && !(t.Name.Space == NSRPID && t.Name.Local == "activities"):
				if len(ps.Extra) < maxExtra {
					raw, err := captureElement(dec, t)
					if err != nil {
						return ps, fmt.Errorf("bad PIDF: %w", err)
					}
					if raw != nil && extraBytes+len(raw) <= maxExtraBytes {
						ps.Extra = append(ps.Extra, raw)
						extraBytes += len(raw)
					}
				} else if err := dec.Skip(); err != nil {
					return ps, fmt.Errorf("bad PIDF: %w", err)
				}
				continue // captureElement consumed the end element
			}
			path = append(path, t.Name)
		case xml.EndElement:
			if len(path) == 0 {
				return ps, errors.New("bad PIDF: unbalanced document")
			}
			path = path[:len(path)-1]
			switch {
			case basic != nil && t.Name.Local == "basic":
				if strings.TrimSpace(basic.String()) == "open" {
					openTuples++
				}
				basic = nil
			case busyText != nil && t.Name.Local == "busy":
				// Linphone marks do not disturb by this text in busy.
				if strings.EqualFold(strings.TrimSpace(busyText.String()), DNDText) {
					ps.Activities = slices.DeleteFunc(ps.Activities, func(a bridge.Activity) bool { return a == bridge.ActivityBusy })
					if !ps.Has(bridge.ActivityDND) {
						ps.Activities = append(ps.Activities, bridge.ActivityDND)
					}
				}
				busyText = nil
			case note != nil && t.Name.Local == "note":
				if *note == "" {
					*note = strings.TrimSpace(noteBuf.String())
				}
				note = nil
			}
		case xml.CharData:
			switch {
			case busyText != nil:
				if busyText.Len()+len(t) <= maxNoteLen {
					busyText.Write(t)
				}
			case basic != nil:
				basic.Write(t)
			case note != nil:
				if noteBuf.Len()+len(t) <= maxNoteLen {
					noteBuf.Write(t)
				}
			}
		case xml.Directive:
			// A DTD could declare entities: refuse it outright.
			return ps, errors.New("bad PIDF: DTDs are not accepted")
		}
	}
	if !sawRoot {
		return ps, ErrNotPIDF
	}
	switch {
	case personNote != "":
		ps.Note = personNote
	case tupleNote != "":
		ps.Note = tupleNote
	default:
		ps.Note = docNote
	}
	ps.Closed = tuples > 0 && openTuples == 0
	ps.Open = openTuples > 0
	return ps, nil
}

func isPerson(n xml.Name) bool { return n.Space == NSDataModel && n.Local == "person" }

// captureElement re-encodes the element that start opens (and everything
// in it) as a self-contained fragment, written here rather than by
// encoding/xml (whose encoder can bind a prefix to the XML namespace and
// repeat an attribute, neither of which a namespace-aware parser
// accepts): every element declares its own namespace as the default one,
// a namespaced attribute gets a prefix declared on its element (xml:
// attributes keep theirs), an attribute repeated under the same expanded
// name is written once, namespace declarations of the source are dropped,
// comments and processing instructions are left out, and text is escaped.
// An element whose names cannot stand without their prefix (a local part
// like "0abc") is consumed and dropped: it returns nil, nil. The fragment
// is checked once more with checkFragment before it is kept.
func captureElement(dec *xml.Decoder, start xml.StartElement) ([]byte, error) {
	var buf bytes.Buffer
	depth := 0
	valid := true
	tok := xml.Token(start)
	for {
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth > maxDepth {
				return nil, errors.New("element too deep")
			}
			if !writeStart(&buf, t) {
				valid = false
			}
		case xml.EndElement:
			depth--
			buf.WriteString("</")
			buf.WriteString(t.Name.Local)
			buf.WriteByte('>')
		case xml.CharData:
			escapeText(&buf, t)
		}
		if buf.Len() > maxExtraBytes {
			for ; depth > 0; depth-- { // the rest of it, unwritten
				if err := dec.Skip(); err != nil {
					return nil, err
				}
			}
			return nil, nil
		}
		if depth == 0 {
			break
		}
		var err error
		if tok, err = dec.Token(); err != nil {
			return nil, err
		}
	}
	if !valid || checkFragment(buf.Bytes()) != nil {
		return nil, nil
	}
	return buf.Bytes(), nil
}

// escapeText writes character data escaped as text needs (&, <, > and
// carriage returns; quotes need nothing here, unlike xml.EscapeText's),
// characters XML forbids replaced with U+FFFD.
func escapeText(buf *bytes.Buffer, t []byte) {
	for len(t) > 0 {
		r, n := utf8.DecodeRune(t)
		switch {
		case r == '&':
			buf.WriteString("&amp;")
		case r == '<':
			buf.WriteString("&lt;")
		case r == '>':
			buf.WriteString("&gt;")
		case r == '\r':
			buf.WriteString("&#13;")
		case r == '\t' || r == '\n':
			buf.WriteRune(r)
		case r == utf8.RuneError && n == 1, r < 0x20, r == 0xFFFE, r == 0xFFFF:
			buf.WriteString("\uFFFD")
		default:
			buf.Write(t[:n])
		}
		t = t[n:]
	}
}

// nsXML is the namespace the xml: prefix is bound to, and nsXMLNS the one
// of namespace declarations.
const (
	nsXML   = "http://www.w3.org/XML/1998/namespace"
	nsXMLNS = "http://www.w3.org/2000/xmlns/"
)

// writeStart writes a start tag; it reports false when a name is not an
// NCName (the element cannot be written).
func writeStart(buf *bytes.Buffer, t xml.StartElement) bool {
	if !isNCName(t.Name.Local) || t.Name.Space == nsXML || t.Name.Space == nsXMLNS ||
		(t.Name.Space != "" && !absoluteURI(t.Name.Space)) {
		return false
	}
	buf.WriteByte('<')
	buf.WriteString(t.Name.Local)
	buf.WriteString(` xmlns="`)
	_ = xml.EscapeText(buf, []byte(t.Name.Space))
	buf.WriteByte('"')
	type expanded struct{ space, local string }
	seen := map[expanded]bool{}
	prefixes := map[string]string{} // namespace → prefix declared here
	for _, a := range t.Attr {
		space := a.Name.Space
		switch {
		case space == "xmlns" || space == nsXMLNS || (space == "" && a.Name.Local == "xmlns"):
			continue // a declaration: ours are written here
		case space == "xml":
			space = nsXML
		}
		if !isNCName(a.Name.Local) || (space != "" && space != nsXML && !absoluteURI(space)) {
			return false
		}
		key := expanded{space, a.Name.Local}
		if seen[key] {
			continue // the same attribute twice: the first stands
		}
		seen[key] = true
		buf.WriteByte(' ')
		switch space {
		case "":
		case nsXML:
			buf.WriteString("xml:")
		default:
			p, ok := prefixes[space]
			if !ok {
				p = "a" + strconv.Itoa(len(prefixes))
				prefixes[space] = p
				buf.WriteString("xmlns:" + p + `="`)
				_ = xml.EscapeText(buf, []byte(space))
				buf.WriteString(`" `)
			}
			buf.WriteString(p + ":")
		}
		buf.WriteString(a.Name.Local)
		buf.WriteString(`="`)
		_ = xml.EscapeText(buf, []byte(a.Value))
		buf.WriteByte('"')
	}
	buf.WriteByte('>')
	return true
}

// isNCName reports whether s is a valid XML name without a colon.
func isNCName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_' || unicode.IsLetter(r):
		case i > 0 && (r == '-' || r == '.' || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r)):
		default:
			return false
		}
	}
	return true
}

// charsetReader reads the encodings a PUBLISHed body may declare.
func charsetReader(charset string, r io.Reader) (io.Reader, error) {
	switch strings.ToLower(charset) {
	case "utf-8", "us-ascii":
		return r, nil
	case "iso-8859-1", "latin1", "iso_8859-1", "l1":
		// Latin-1 bodies (FreeSWITCH declares it): each byte is the
		// code point of the same number.
		return &latin1Reader{r: r}, nil
	}
	return nil, fmt.Errorf("unsupported charset %q", charset)
}

// absoluteURI reports whether a namespace name is an absolute URI (RFC
// 3986: a scheme, a colon, and only the characters a URI may hold, a "%"
// only before two hex digits), as namespace names should be: libxml2
// refuses or warns about any other.
func absoluteURI(ns string) bool {
	scheme, rest, ok := strings.Cut(ns, ":")
	if !ok || scheme == "" || !isAlpha(scheme[0]) {
		return false
	}
	for i := 1; i < len(scheme); i++ {
		c := scheme[i]
		if !isAlpha(c) && !(c >= '0' && c <= '9') && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		switch {
		case isAlpha(c), c >= '0' && c <= '9', strings.IndexByte("-._~:/?#[]@!$&'()*+,;=", c) >= 0:
		case c == '%' && i+2 < len(rest) && isHex(rest[i+1]) && isHex(rest[i+2]):
			i += 2
		default:
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// latin1Reader decodes ISO-8859-1 into UTF-8.
type latin1Reader struct {
	r       io.Reader
	pending []byte // encoded but not yet read
	in      [512]byte
}

func (l *latin1Reader) Read(p []byte) (int, error) {
	if len(l.pending) == 0 {
		n, err := l.r.Read(l.in[:min(len(l.in), max(len(p)/2, 1))])
		if n == 0 {
			return 0, err
		}
		for _, b := range l.in[:n] {
			l.pending = utf8.AppendRune(l.pending, rune(b))
		}
	}
	n := copy(p, l.pending)
	l.pending = l.pending[n:]
	return n, nil
}
