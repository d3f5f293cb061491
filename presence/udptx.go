package presence

import (
	"bytes"
	"net"
	"net/netip"
	"unsafe"

	"github.com/lamplighter/lamplighter/presence/internal/udptx"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Requests over UDP run on Lamplighter's own path: the datagram filter
// reads a SUBSCRIBE, PUBLISH, REGISTER or OPTIONS with sipmsg and hands it
// to its handler with a server transaction of ours (internal/udptx)
// instead of sipgo's. Anything else (INVITE, ACK, CANCEL, other methods)
// still goes to sipgo.

// udpTx is a UDP server transaction as the handlers see it (serverTx).
type udpTx struct{ *udptx.Tx }

func (tx udpTx) respond(b []byte, code int) error { return tx.Respond(b, code) }
func (tx udpTx) done()                            { tx.Done() }

// queueDatagram hands a request datagram to the workers (a copy: the
// read buffer is reused), or sheds it when the queue is full.
func (s *Server) queueDatagram(local *net.UDPConn, from netip.AddrPort, data []byte) {
	if s.queuedBytes.Load()+int64(len(data)) > maxQueuedBytes {
		s.shed(local, from, data, "requests")
		return
	}
	s.queuedBytes.Add(int64(len(data)))
	select {
	case s.work <- udpJob{conn: local, from: from, data: s.datagramCopy(data)}:
	default:
		s.queuedBytes.Add(-int64(len(data)))
		s.shed(local, from, data, "requests")
	}
}

// serveDatagram runs a request datagram on Lamplighter's own path, in a
// worker: read by sipmsg (what cannot be read is answered 400 from the
// bytes), then run with a transaction of ours, or with none when the
// answer cannot change anything.
func (s *Server) serveDatagram(local *net.UDPConn, from netip.AddrPort, data []byte) {
	// The job's copy is ours and not written again while the request's
	// strings share it: only a request answered and forgotten at once
	// (challenged, refused, shed) gives it and its Request back for
	// reuse; one that may leave strings behind leaves both to the
	// collector.
	req := s.requests.Get().(*sipmsg.Request)
	if err := sipmsg.ParseInto(req, unsafe.String(&data[0], len(data))); err != nil {
		// What cannot be read is answered from the bytes when it can be,
		// and kept nowhere.
		code, reason := readFailure(err)
		s.answerDatagram(local, from, data, code, reason)
		s.recycle(req, data)
		return
	}
	handler, ok := s.handlerFor(req.Method)
	if !ok {
		return // onDatagram let only served methods in: cannot happen
	}
	req.Transport, req.Peer, req.Source = "UDP", from, from.String()
	switch s.admit(req) {
	case admitForward:
		if sc := s.toSipgo[local]; sc != nil {
			sc.pass(data, from)
		}
		return
	case admitChallenge:
		// Kept nowhere: a retransmission is challenged again, and a
		// flood of them costs no memory and next to no garbage.
		s.challengeDatagram(local, from, req)
		s.recycle(req, data)
		return
	}
	switch {
	case req.Method == "OPTIONS":
		// Anyone may ask; the answer changes nothing: kept nowhere.
		handler(req, udpTx{udptx.Stateless(local, from)})
		return
	}
	tx, isNew := s.udpTxs.Open(udptx.Key(req, from), local, from)
	if !isNew {
		tx.Retransmitted()
		return
	}
	if why := s.overloaded(req); why != "" {
		s.udpTxs.Forget(tx) // its retransmission is a new request
		s.shed(local, from, data, why)
		s.recycle(req, data)
		return
	}
	handler(req, udpTx{tx})
}

// challengeDatagram answers req, which carries no credentials
// (mustChallenge), as authenticate would, in a reused buffer and with a
// transaction kept nowhere.
func (s *Server) challengeDatagram(local *net.UDPConn, from netip.AddrPort, req *sipmsg.Request) {
	bp := s.datagrams.Get().(*[]byte)
	s.challenge(req, udpTx{udptx.Stateless(local, from)}, false, (*bp)[:0])
	s.datagrams.Put(bp) // written by now; a copy grown past it is the collector's
}

// datagramBytes is the size of the buffers request datagrams are copied
// into for the workers (most requests fit; a larger one gets a buffer of
// its own, never reused).
const datagramBytes = 2048

// datagramCopy copies a request datagram out of the read buffer for a
// worker, into a reused buffer when one is free.
func (s *Server) datagramCopy(data []byte) []byte {
	if len(data) > datagramBytes {
		return bytes.Clone(data)
	}
	b := s.datagrams.Get().(*[]byte)
	return append((*b)[:0], data...)
}

// recycle gives a request answered and forgotten, and the datagram it
// was read from, back for reuse. Nothing may refer to either after.
func (s *Server) recycle(req *sipmsg.Request, data []byte) {
	*req = sipmsg.Request{} // drops what it pointed at
	s.requests.Put(req)
	if cap(data) == datagramBytes {
		data = data[:0]
		s.datagrams.Put(&data)
	}
}
