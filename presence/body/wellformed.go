package body

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// checkFragment reports whether b is namespace-well-formed XML (Namespaces
// in XML 1.0) as a strict parser such as libxml2 reads it, in the ways
// encoding/xml does not check: start and end tags match, no attribute
// appears twice (by name, or by namespace and local name once prefixes
// are resolved), every prefix used is declared, the xml prefix is bound
// only to its namespace and nothing else is, the xmlns prefix and
// namespace are never declared, and no prefix is undeclared to "".
func checkFragment(b []byte) error {
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	d.CharsetReader = charsetReader
	scopes := []map[string]string{{"xml": nsXML}}
	lookup := func(prefix string) (string, bool) {
		for i := len(scopes) - 1; i >= 0; i-- {
			if v, ok := scopes[i][prefix]; ok {
				return v, true
			}
		}
		return "", prefix == ""
	}
	var open []xml.Name
	roots := 0
	for {
		tok, err := d.RawToken()
		if err == io.EOF {
			if len(open) != 0 {
				return errors.New("unclosed element")
			}
			if roots != 1 {
				return fmt.Errorf("%d root elements", roots)
			}
			return nil
		}
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if len(open) == 0 {
				roots++
			}
			ns := map[string]string{}
			raw := map[xml.Name]bool{}
			for _, a := range t.Attr {
				if raw[a.Name] {
					return fmt.Errorf("attribute %s:%s repeated", a.Name.Space, a.Name.Local)
				}
				raw[a.Name] = true
				switch {
				case a.Name.Space == "xmlns":
					switch {
					case a.Name.Local == "xmlns":
						return errors.New("the xmlns prefix declared")
					case (a.Name.Local == "xml") != (a.Value == nsXML):
						return errors.New("the xml prefix or namespace bound otherwise")
					case a.Value == nsXMLNS:
						return errors.New("the xmlns namespace declared")
					case a.Value == "":
						return fmt.Errorf("prefix %s undeclared", a.Name.Local)
					case !validNamespace(a.Value):
						return fmt.Errorf("namespace %q is not a URI", a.Value)
					}
					ns[a.Name.Local] = a.Value
				case a.Name.Space == "" && a.Name.Local == "xmlns":
					if a.Value == nsXML || a.Value == nsXMLNS {
						return errors.New("a reserved namespace as the default")
					}
					if a.Value != "" && !validNamespace(a.Value) {
						return fmt.Errorf("namespace %q is not a URI", a.Value)
					}
					ns[""] = a.Value
				}
			}
			scopes = append(scopes, ns)
			if _, ok := lookup(t.Name.Space); !ok {
				return fmt.Errorf("prefix %s not declared", t.Name.Space)
			}
			type expanded struct{ space, local string }
			seen := map[expanded]bool{}
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
					continue
				}
				space := ""
				if a.Name.Space != "" {
					v, ok := lookup(a.Name.Space)
					if !ok {
						return fmt.Errorf("prefix %s not declared", a.Name.Space)
					}
					space = v
				}
				key := expanded{space, a.Name.Local}
				if seen[key] {
					return fmt.Errorf("attribute {%s}%s repeated", space, a.Name.Local)
				}
				seen[key] = true
			}
			open = append(open, t.Name)
		case xml.EndElement:
			if len(open) == 0 || open[len(open)-1] != t.Name {
				return fmt.Errorf("end tag %s:%s does not match", t.Name.Space, t.Name.Local)
			}
			open = open[:len(open)-1]
			scopes = scopes[:len(scopes)-1]
		case xml.CharData:
			if len(open) == 0 && len(bytes.TrimSpace(t)) > 0 {
				return errors.New("text outside the root element")
			}
		case xml.Directive:
			return errors.New("a DTD or other directive")
		}
	}
}

// validNamespace reports whether a namespace name is a URI reference as
// strict parsers (libxml2) read one (RFC 3986): only its characters, '%'
// followed by two hex digits, and no brackets (which RFC 3986 keeps for
// an IPv6 host, and no namespace in a presence document has).
func validNamespace(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~:/?#@!$&'()*+,;=", c) >= 0:
		case c == '%':
			if i+2 >= len(v) || !isHex(v[i+1]) || !isHex(v[i+2]) {
				return false
			}
			i += 2
		default:
			return false
		}
	}
	return true
}
