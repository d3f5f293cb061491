package sipmsg

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

const subscribe = "SUBSCRIBE sip:1001@pbx.example.com:5070;user=phone SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport\r\n" +
	"v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0 , SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK-x\r\n" +
	"Max-Forwards: 70\r\n" +
	"f: \"Desk, 12\" <sip:1002@pbx.example.com>;tag=abc\r\n" +
	"To: <sip:1001@pbx.example.com>\r\n" +
	"i: call-1@10.0.0.5\r\n" +
	"CSeq: 7 SUBSCRIBE\r\n" +
	"m: <sip:1002@10.0.0.5:5062;transport=udp>;expires=60\r\n" +
	"o: dialog;id=7\r\n" +
	"Accept: application/dialog-info+xml,\r\n application/pidf+xml\r\n" +
	"X-Custom:  yes \r\n" +
	"l: 4\r\n" +
	"\r\n" +
	"bodyPADDING"

func TestParseReadsASubscribe(t *testing.T) {
	r, err := ParseString(subscribe)
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != "SUBSCRIBE" || r.URI.User != "1001" || r.URI.Host != "pbx.example.com" || r.URI.Port != 5070 {
		t.Errorf("request line: %+v", r.URI)
	}
	if v, _ := r.URI.Params.Get("user"); v != "phone" {
		t.Errorf("uri param user = %q", v)
	}
	if r.CallID != "call-1@10.0.0.5" || r.CSeq != 7 || r.CSeqMethod != "SUBSCRIBE" {
		t.Errorf("call-id %q cseq %d %q", r.CallID, r.CSeq, r.CSeqMethod)
	}
	if r.From.Tag() != "abc" || r.From.Display != `"Desk, 12"` || r.From.URI.User != "1002" {
		t.Errorf("from %+v", r.From)
	}
	if r.To.Tag() != "" || r.To.URI.Raw != "sip:1001@pbx.example.com" {
		t.Errorf("to %+v", r.To)
	}
	if ev, _ := r.Get(Event); ev != "dialog;id=7" {
		t.Errorf("event %q", ev)
	}
	if got := slices.Collect(r.Values(Accept)); !slices.Equal(got, []string{"application/dialog-info+xml", "application/pidf+xml"}) {
		t.Errorf("accept %q (a folded line)", got)
	}
	if v, _ := r.Header("x-custom"); v != "yes" {
		t.Errorf("x-custom %q", v)
	}
	if string(r.Body) != "body" {
		t.Errorf("body %q: cut to Content-Length", r.Body)
	}
	vias := slices.Collect(r.Values(Via))
	if len(vias) != 3 {
		t.Fatalf("vias %q", vias)
	}
	hop, err := ParseVia(vias[2])
	if err != nil || hop.Transport != "TCP" || hop.Host != "[2001:db8::1]" || hop.Port != 5060 || hop.Branch() != "z9hG4bK-x" {
		t.Errorf("third via %+v %v", hop, err)
	}
	c, err := ParseAddress(first(r.Values(Contact)))
	if err != nil || c.URI.Port != 5062 || c.URI.Raw != "sip:1002@10.0.0.5:5062;transport=udp" {
		t.Errorf("contact %+v %v", c, err)
	}
	if e, _ := c.Params.Get("expires"); e != "60" {
		t.Errorf("contact expires %q", e)
	}
}

func first(seq func(func(string) bool)) string {
	for v := range seq {
		return v
	}
	return ""
}

func TestParseRefusesWithAReason(t *testing.T) {
	ok := "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
	if _, err := ParseString(ok); err != nil {
		t.Fatalf("the base request: %v", err)
	}
	for name, tc := range map[string]struct{ msg, reason string }{
		"no blank line":  {strings.TrimSuffix(ok, "\r\n"), "Missing Blank Line"},
		"no via":         {strings.Replace(ok, "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n", "", 1), "Missing Via"},
		"bad via":        {strings.Replace(ok, "SIP/2.0/UDP h;", "SIP/2.0/UDP;", 1), "Bad Via"},
		"no call-id":     {strings.Replace(ok, "Call-ID: c\r\n", "", 1), "Missing Call-ID"},
		"cseq method":    {strings.Replace(ok, "1 OPTIONS", "1 INVITE", 1), "CSeq Method Mismatch"},
		"cseq number":    {strings.Replace(ok, "1 OPTIONS", "x OPTIONS", 1), "Bad CSeq"},
		"no to":          {strings.Replace(ok, "To: <sip:a@b>\r\n", "", 1), "Missing To"},
		"bad from":       {strings.Replace(ok, "<sip:x@y>", "<sip:x@y", 1), "Bad From"},
		"request uri":    {strings.Replace(ok, "sip:a@b SIP", "sip: SIP", 1), "Bad Request-URI"},
		"header line":    {strings.Replace(ok, "Call-ID: c", "Call ID c", 1), "Bad Header Line"},
		"short body":     {strings.Replace(ok, "\r\n\r\n", "\r\nContent-Length: 5\r\n\r\nab", 1), "Content-Length Beyond Message"},
		"content-length": {strings.Replace(ok, "\r\n\r\n", "\r\nContent-Length: -1\r\n\r\n", 1), "Bad Content-Length"},
		"version":        {strings.Replace(ok, "SIP/2.0\r\n", "SIP/3.0\r\n", 1), "Version Not Supported"},
		"two froms":      {strings.Replace(ok, "To:", "f: <sip:z@y>;tag=2\r\nTo:", 1), "Duplicate From"},
		"two call-ids":   {strings.Replace(ok, "Call-ID: c\r\n", "Call-ID: c\r\ni: d\r\n", 1), "Duplicate Call-ID"},
		"two cseqs":      {strings.Replace(ok, "\r\n\r\n", "\r\nCSeq: 2 OPTIONS\r\n\r\n", 1), "Duplicate CSeq"},
		"quote in uri":   {strings.Replace(ok, "<sip:x@y>;tag=1", `a:0"`, 1), "Bad From"},
	} {
		_, err := ParseString(tc.msg)
		var e *Error
		if !errors.As(err, &e) || e.Reason != tc.reason {
			t.Errorf("%s: got %v, want %q", name, err, tc.reason)
		}
	}
	if _, err := ParseString("SIP/2.0 200 OK\r\nVia: x\r\n\r\n"); !errors.Is(err, ErrNotRequest) {
		t.Errorf("a response: %v", err)
	}
	many := strings.Replace(ok, "\r\n\r\n", "\r\n"+strings.Repeat("X: y\r\n", MaxFields)+"\r\n", 1)
	var e *Error
	if _, err := ParseString(many); !errors.As(err, &e) || e.Code != 413 {
		t.Errorf("too many headers: %v", err)
	}
}

func TestParseURI(t *testing.T) {
	for in, want := range map[string]URI{
		"sip:1001@example.com":                {Scheme: "sip", User: "1001", Host: "example.com"},
		"SIPS:alice:secret@[::1]:5061;lr":     {Scheme: "SIPS", User: "alice", Host: "[::1]", Port: 5061, Params: ";lr"},
		"sip:10.0.0.1:5060;transport=tcp?x=y": {Scheme: "sip", Host: "10.0.0.1", Port: 5060, Params: ";transport=tcp"},
		"tel:+15551234":                       {Scheme: "tel"},
	} {
		got, err := ParseURI(in)
		want.Raw = in
		if err != nil || got != want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "sip:", "sip:a@", "sip:host:0", "sip:host:99999", "sip:[::1", "1sip:a", "sip:a b", `tel:1"`, "urn:a<b", "tel:1 2"} {
		if _, err := ParseURI(in); err == nil {
			t.Errorf("ParseURI(%q) took it", in)
		}
	}
}

func TestAddressForms(t *testing.T) {
	a, err := ParseAddress(`sip:bob@example.com;tag=99;expires=5`)
	if err != nil || a.URI.Raw != "sip:bob@example.com" || a.Tag() != "99" {
		t.Errorf("addr-spec: %+v %v (its params are the header's)", a, err)
	}
	a, err = ParseAddress(`"a <b>; c" <sip:x@y;lr>;tag="q;t"`)
	if err != nil || a.URI.Raw != "sip:x@y;lr" || a.Tag() != "q;t" || a.Display != `"a <b>; c"` {
		t.Errorf("name-addr: %+v %v", a, err)
	}
	if _, err := ParseAddress(`<sip:x@y>garbage`); err == nil {
		t.Error("took text after >")
	}
}

func TestResponseCopiesTheRequestAndFillsVia(t *testing.T) {
	r, err := ParseString(subscribe)
	if err != nil {
		t.Fatal(err)
	}
	r.Peer = netip.MustParseAddrPort("192.0.2.9:40000")
	b := AppendResponse(nil, r, 200, "OK", "ours")
	b = AppendHeader(b, "Expires", "60")
	b = AppendBody(b, "", nil)
	want := "SIP/2.0 200 OK\r\n" +
		"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1;rport=40000;received=192.0.2.9\r\n" +
		"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0\r\n" +
		"Via: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK-x\r\n" +
		"From: \"Desk, 12\" <sip:1002@pbx.example.com>;tag=abc\r\n" +
		"To: <sip:1001@pbx.example.com>;tag=ours\r\n" +
		"Call-ID: call-1@10.0.0.5\r\n" +
		"CSeq: 7 SUBSCRIBE\r\n" +
		"Expires: 60\r\n" +
		"Content-Length: 0\r\n\r\n"
	if string(b) != want {
		t.Errorf("got\n%s\nwant\n%s", b, want)
	}
	// Without rport, received only when the sent-by is not the source.
	r.Peer = netip.MustParseAddrPort("10.0.0.5:5062")
	r.Fields[0].Value = "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1"
	b = AppendResponse(nil, r, 481, "Gone", "")
	if !strings.Contains(string(b), "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1\r\n") {
		t.Errorf("received added for the sent-by's own address:\n%s", b)
	}
	if !strings.Contains(string(b), ";tag="+StableTag(r.CallID)+"\r\n") {
		t.Errorf("no stable tag:\n%s", b)
	}
	r.Peer = netip.MustParseAddrPort("10.0.0.6:5062")
	if b = AppendResponse(nil, r, 481, "Gone", ""); !strings.Contains(string(b), "branch=z9hG4bK-1;received=10.0.0.6\r\n") {
		t.Errorf("no received for another source:\n%s", b)
	}
}

func TestParamsWithout(t *testing.T) {
	p := Params(`;expires=60;+sip.instance="<urn:uuid:a;b>";reg-id=1;EXPIRES=5`)
	if got, want := p.Without("expires"), `;+sip.instance="<urn:uuid:a;b>";reg-id=1`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := Params("").Without("x"); got != "" {
		t.Errorf("empty: %q", got)
	}
}
