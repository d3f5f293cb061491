package sipmsg

import "testing"

// TestCutHeadIsParsesRule: CutHead finds the blank line where Parse
// does, with CRLFs, bare LFs or both.
func TestCutHeadIsParsesRule(t *testing.T) {
	for _, msg := range []string{
		"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\nbody",
		"OPTIONS sip:a@b SIP/2.0\nVia: x\n\nbody",
		"OPTIONS sip:a@b SIP/2.0\r\nVia: x\n\r\nbody",
		"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n",
	} {
		head, body, found := CutHead([]byte(msg))
		h, b, f := cutHead(msg)
		if string(head) != h || string(body) != b || found != f {
			t.Errorf("%q: CutHead %q %q %v, Parse's %q %q %v", msg, head, body, found, h, b, f)
		}
		line, rest := CutLine(head)
		l, r := cutLine(h)
		if string(line) != l || string(rest) != r {
			t.Errorf("%q: CutLine %q %q, Parse's %q %q", msg, line, rest, l, r)
		}
	}
}
