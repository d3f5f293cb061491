package body

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"strconv"
	"testing"
)

// TestRLMIDocument: a full list and a partial one, with a member gone
// (terminated, no part) and names that need escaping.
func TestRLMIDocument(t *testing.T) {
	full := RLMI(nil, "sip:desk@pbx.example.com", "Front desk", 0, true, []Resource{
		{URI: "sip:100@pbx.example.com", Name: "Debbie Harry", Instance: "debbie", State: "active", CID: "m0.0.x@pbx.example.com"},
		{URI: "sip:101@pbx.example.com", Name: `Bob "B" <Marley> & co`, Instance: "bob", State: "active", CID: "m1.0.x@pbx.example.com"},
	})
	golden(t, "rlmi-full.xml", full)
	partial := RLMI(nil, "sip:desk@pbx.example.com", "Front desk", 7, false, []Resource{
		{URI: "sip:102@pbx.example.com", Name: "Carol King", Instance: "carol", State: "terminated", Reason: "noresource"},
	})
	golden(t, "rlmi-partial-gone.xml", partial)
}

// TestMultipartBody: the body a list NOTIFY carries reads back with Go's
// MIME reader (RFC 2046/2387): the type names RLMI, the parts come in
// order with their Content-IDs, types and exact Content-Lengths.
func TestMultipartBody(t *testing.T) {
	const boundary = "LL-abc123"
	rlmi := RLMI(nil, "sip:desk@h", "desk", 1, false, []Resource{{URI: "sip:100@h", Instance: "a", State: "active", CID: "m0@h"}})
	doc := []byte("<?xml version=\"1.0\"?>\n<dialog-info/>\n")
	b := AppendPart(nil, boundary, "rlmi@h", TypeRLMI, rlmi)
	b = AppendPart(b, boundary, "m0@h", TypeDialogInfo, doc)
	b = EndParts(b, boundary)
	golden(t, "rls-multipart.txt", b)

	mt, params, err := mime.ParseMediaType(string(MultipartType(nil, boundary)))
	if err != nil || mt != TypeMultipartRelated || params["type"] != TypeRLMI || params["boundary"] != boundary {
		t.Fatalf("Content-Type: %s %v %v", mt, params, err)
	}
	r := multipart.NewReader(bytes.NewReader(b), boundary)
	for i, want := range []struct {
		cid, ctype string
		body       []byte
	}{{"<rlmi@h>", TypeRLMI, rlmi}, {"<m0@h>", TypeDialogInfo, doc}} {
		p, err := r.NextPart()
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		got, _ := io.ReadAll(p)
		if p.Header.Get("Content-ID") != want.cid || p.Header.Get("Content-Type") != want.ctype || !bytes.Equal(got, want.body) ||
			p.Header.Get("Content-Length") != strconv.Itoa(len(want.body)) {
			t.Errorf("part %d: %v\n%q", i, p.Header, got)
		}
	}
	if _, err := r.NextPart(); err != io.EOF {
		t.Errorf("after the last part: %v", err)
	}
}
