package body

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"

	"github.com/lamplighter/lamplighter/bridge"
)

// Limits on published documents, beyond the byte limit the server applies.
const (
	maxDepth    = 32
	maxElements = 2000
	maxExtra    = 16
	maxNoteLen  = 1024
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
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	dec.CharsetReader = func(charset string, r io.Reader) (io.Reader, error) {
		switch strings.ToLower(charset) {
		case "utf-8", "us-ascii", "iso-8859-1", "latin1":
			// Latin-1 bodies (FreeSWITCH declares it) are read as UTF-8:
			// notes are the only text we keep and are sanitised.
			return r, nil
		}
		return nil, fmt.Errorf("unsupported charset %q", charset)
	}
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
			case isPerson(parent) && !(t.Name.Space == NSRPID && t.Name.Local == "activities"):
				if len(ps.Extra) < maxExtra {
					raw, err := captureElement(dec, t)
					if err != nil {
						return ps, fmt.Errorf("bad PIDF: %w", err)
					}
					if raw != nil {
						ps.Extra = append(ps.Extra, raw)
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
			case note != nil && t.Name.Local == "note":
				if *note == "" {
					*note = strings.TrimSpace(noteBuf.String())
				}
				note = nil
			}
		case xml.CharData:
			switch {
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
	return ps, nil
}

func isPerson(n xml.Name) bool { return n.Space == NSDataModel && n.Local == "person" }

// captureElement re-encodes the element that start opens (and everything
// in it) as a self-contained fragment: namespaces become xmlns attributes
// on the elements that use them. An element whose names cannot stand
// without their prefix (a local part like "0abc") is consumed and dropped:
// it returns nil, nil.
func captureElement(dec *xml.Decoder, start xml.StartElement) ([]byte, error) {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
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
			t.Attr = cleanAttrs(t.Attr)
			if !isNCName(t.Name.Local) {
				valid = false
			}
			for _, a := range t.Attr {
				if !isNCName(a.Name.Local) {
					valid = false
				}
			}
			tok = t
		case xml.EndElement:
			depth--
		case xml.Directive, xml.ProcInst:
			tok = nil
		}
		if tok != nil && valid {
			if err := enc.EncodeToken(xml.CopyToken(tok)); err != nil {
				return nil, err
			}
		}
		if depth == 0 {
			break
		}
		var err error
		if tok, err = dec.Token(); err != nil {
			return nil, err
		}
	}
	if !valid {
		return nil, nil
	}
	if err := enc.Flush(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
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

// cleanAttrs drops namespace declarations (the encoder writes its own) so
// that a prefix declared on an ancestor cannot dangle.
func cleanAttrs(attrs []xml.Attr) []xml.Attr {
	out := attrs[:0:0]
	for _, a := range attrs {
		if a.Name.Space == "xmlns" || a.Name.Local == "xmlns" {
			continue
		}
		out = append(out, a)
	}
	return out
}
