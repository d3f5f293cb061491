package presence

import (
	"testing"

	"github.com/icholy/digest"
)

// TestParseCredentialsAgreesWithTheLibrary: the server's own reader of
// Authorization values gives what digest.ParseCredentials gives for what
// real clients send (baresip, Linphone, sipgo, Yealink's order, quoted
// and unquoted values, escapes), and refuses what is not Digest.
func TestParseCredentialsAgreesWithTheLibrary(t *testing.T) {
	for _, h := range []string{
		`Digest username="bob", realm="test.invalid", nonce="abc", uri="sip:100@127.0.0.1", response="0123456789abcdef0123456789abcdef", algorithm=MD5`,
		`Digest username="bob",realm="test.invalid",nonce="abc",uri="sip:100@h",response="ff",algorithm=SHA-256,cnonce="c1",qop=auth,nc=0000000a`,
		`Digest realm="r", username="a\"b", nonce="n,with,commas", uri="sip:x@y;transport=tcp", response="1", opaque="o", userhash=true`,
		`digest username="bob", realm="r", nonce="n", uri="sip:a@b", response="1", qop=auth, nc=7fffffff, cnonce="x"`,
	} {
		want, err := digest.ParseCredentials(h)
		got, ok := parseCredentials(h)
		if err != nil {
			if ok {
				t.Errorf("%s: the library refuses it (%v), we took %+v", h, err, got)
			}
			continue
		}
		if !ok || got != *want {
			t.Errorf("%s:\n got %+v\nwant %+v", h, got, *want)
		}
	}
	// nc is 8 hex digits (RFC 7616 §3.4): the library stops at 2^31-1.
	if c, ok := parseCredentials(`Digest username="a", nc=ffffffff`); !ok || c.Nc != 0xffffffff {
		t.Errorf("nc=ffffffff: %+v, %v", c, ok)
	}
	for _, h := range []string{`Basic Ym9iOnNlY3JldA==`, `Digest username`, `Digest username="bob`, `Digest nc=zz`, ``} {
		if c, ok := parseCredentials(h); ok {
			t.Errorf("%q taken: %+v", h, c)
		}
	}
}

func BenchmarkParseCredentials(b *testing.B) {
	const h = `Digest username="bob",realm="test.invalid",nonce="AAAAAGc1a2xkAAAAAQ.abcdefghijklmnop.qrstuvwxyz012345",uri="sip:100@h",response="0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",algorithm=SHA-256,cnonce="c1",qop=auth,nc=0000000a`
	b.Run("ours", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			parseCredentials(h)
		}
	})
	b.Run("library", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = digest.ParseCredentials(h)
		}
	})
}
