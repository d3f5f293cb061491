package presence

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Overload: when every phone of an office reboots at once (a power cut)
// the SUBSCRIBEs arrive faster than they can be answered. A server that
// queues them all answers late, the phones retransmit, and the
// retransmissions and the NOTIFYs retransmitted to phones too busy to
// answer make the overload worse. So requests over UDP wait for a fixed
// pool of workers in a bounded queue, and past either bound below a new
// request is answered at once, statelessly, with 503 and a Retry-After
// spread over a few seconds (RFC 3261 §21.5.4), which phones honour:
//   - the request queue is full (MaxPendingRequests);
//   - for a SUBSCRIBE out of dialog, more NOTIFYs wait to be sent or answered than
//     MaxPendingNotifies: each new subscription adds one.
// Retransmissions of requests already taken are absorbed as before.

// Defaults of the overload bounds.
const (
	DefaultMaxPendingRequests = 4096
	DefaultMaxPendingNotifies = 8192
	// DefaultRetryAfter is the longest Retry-After of a shed request;
	// each gets 1 to this many seconds at random, so that the retries
	// do not come back as one wave.
	DefaultRetryAfter = 5
)

// udpJob is a request datagram waiting for a worker: the listener it
// came on, its source and a copy of its bytes.
type udpJob struct {
	conn *net.UDPConn
	from netip.AddrPort
	data []byte
}

// maxQueuedBytes bounds the bytes of the requests waiting for a worker,
// whatever their number: 4096 requests near the 32 KiB a datagram may
// hold would otherwise be 128 MiB.
const maxQueuedBytes = 16 << 20

// requestWorkers is the size of the pool that runs requests over UDP:
// the handlers hardly block and each worker yields to the readers after
// every request, so two a core (four at least) keep every core busy.
func requestWorkers() int { return max(4, 2*runtime.GOMAXPROCS(0)) }

// serveRequests runs queued UDP requests until ctx ends.
func (s *Server) serveRequests(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-s.work:
			s.queuedBytes.Add(-int64(len(j.data)))
			s.serveDatagram(j.conn, j.from, j.data)
			runtime.Gosched() // the readers first: what waits in the kernel is dropped when it fills
		}
	}
}

// overloaded reports why a request just read should be shed now, ""
// when it may be taken (a full request queue sheds before reading: see
// queueDatagram). Only a SUBSCRIBE that makes a subscription adds to the
// NOTIFY backlog; a refresh or an unsubscribe of one that exists does not
// grow the work in hand.
func (s *Server) overloaded(req *sipmsg.Request) string {
	if req.Method == "SUBSCRIBE" && req.To.Tag() == "" && s.notifyBacklog() > s.opt.MaxPendingNotifies {
		return "notifies"
	}
	return ""
}

// notifyBacklog is the number of NOTIFYs waiting to be sent or answered.
func (s *Server) notifyBacklog() int { return s.queue.len() + s.notifier.Pending() }

// shed answers a request with 503 and a random Retry-After, keeping
// nothing, and counts it.
func (s *Server) shed(conn *net.UDPConn, from netip.AddrPort, data []byte, why string) {
	s.noteShed(why) // counted first: whoever reads the 503 sees it counted
	s.answerDatagram(conn, from, data, 503, "Service Unavailable", s.retryAfter())
}

// retryAfter is a Retry-After header line for a shed request.
func (s *Server) retryAfter() string {
	return "Retry-After: " + strconv.Itoa(1+rand.IntN(s.opt.RetryAfter))
}

// noteShed counts a shed request and logs the first of each spell.
func (s *Server) noteShed(why string) {
	s.shedCount.Add(1)
	now := time.Now().UnixNano()
	if last := s.shedLogged.Load(); now-last > int64(10*time.Second) && s.shedLogged.CompareAndSwap(last, now) {
		s.log.Warn("overloaded: answering new requests 503 with Retry-After", "queue", why,
			"pending_requests", len(s.work), "pending_notifies", s.notifyBacklog())
	}
}

// Shed returns how many requests were answered 503 for overload.
func (s *Server) Shed() int64 { return s.shedCount.Load() }

// overloadState is the Server's part of the above.
type overloadState struct {
	work        chan udpJob
	queuedBytes atomic.Int64 // of the requests in work
	shedCount   atomic.Int64
	shedLogged  atomic.Int64
}
