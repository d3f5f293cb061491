package presence

import (
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// The requests the server answers itself (SUBSCRIBE, PUBLISH, REGISTER,
// OPTIONS) are read by sipmsg from the bytes that carried them and
// answered with responses written as bytes: over UDP by the workers the
// socket readers queue them for, with a transaction of ours (udptx.go),
// over TCP and TLS by the stream guard as each message is framed
// (stream.go). sipgo never sees them; it answers other methods 405.

// serverTx is where the responses to one request go.
type serverTx interface {
	// respond sends a whole response with status code.
	respond(b []byte, code int) error
	// done ends the transaction with no response of the server's (the
	// request went on statelessly, and the next hop answers): nothing is
	// kept, so that a retransmission goes on too.
	done()
}

// requestHandler answers one request.
type requestHandler func(req *sipmsg.Request, tx serverTx)

// handlers are the methods the server answers itself, each behind
// checked; made once (New), read by every request.
func (s *Server) makeHandlers() map[string]requestHandler {
	h := map[string]requestHandler{
		"SUBSCRIBE": s.checked(s.handleSubscribe),
		"PUBLISH":   s.checked(s.handlePublish),
		"REGISTER":  s.checked(s.handleRegister),
		"OPTIONS":   s.checked(s.handleOptions),
	}
	if s.opt.Forwarder != nil {
		h["CANCEL"] = s.checked(s.handleCancel) // proxy mode (forward.go)
	}
	return h
}

// handlerFor returns the handler of a method the server answers itself.
func (s *Server) handlerFor(method string) (requestHandler, bool) {
	h, ok := s.handlers[method]
	return h, ok
}

// serves reports whether the server answers method itself.
func (s *Server) serves(method string) bool {
	_, ok := s.handlers[method]
	return ok
}

// checked runs the checks every request we serve must pass before its
// handler: a body within MaxBodyBytes. (sipmsg refuses a CSeq whose
// method is not the request's, RFC 3261 §8.2.2 and §20.16.)
func (s *Server) checked(h requestHandler) requestHandler {
	return func(req *sipmsg.Request, tx serverTx) {
		if len(req.Body) > s.opt.MaxBodyBytes {
			s.reply(req, tx, 413, "Request Entity Too Large")
			return
		}
		h(req, tx)
	}
}

// field is one extra header line of a response.
type field struct{ name, value string }

// response starts a response to req: status line and the headers copied
// from the request; toTag is the dialog's tag ("" for none made).
func (s *Server) response(req *sipmsg.Request, code int, reason, toTag string) []byte {
	return sipmsg.AppendResponse(make([]byte, 0, 512+len(req.CallID)), req, code, reason, toTag)
}

// send ends a response begun by response (Server, no body) and sends it;
// one that cannot be sent is logged with the cause and not counted.
func (s *Server) send(req *sipmsg.Request, tx serverTx, b []byte, code int) {
	b = sipmsg.AppendHeader(b, "Server", s.opt.UserAgent)
	b = sipmsg.AppendBody(b, "", nil)
	if err := tx.respond(b, code); err != nil {
		s.log.Warn("cannot send a response", "method", req.Method, "status", code,
			"to", req.Source, "err", err)
		return
	}
	s.opt.Metrics.Response(methodLabel(req.Method), code)
}

// reply sends a response with no body and the given extra headers.
func (s *Server) reply(req *sipmsg.Request, tx serverTx, code int, reason string, hdrs ...field) {
	b := s.response(req, code, reason, "")
	for _, h := range hdrs {
		b = sipmsg.AppendHeader(b, h.name, h.value)
	}
	s.send(req, tx, b, code)
}
