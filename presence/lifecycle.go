package presence

// The lifecycle of subscriptions, for what follows them from outside the
// dialog machinery: watcher information (winfo.go) is one, and a package
// that must know who watches whom would be another. Observers are told
// after the fact, with no lock held (doc.go), and must not block.
type lifecycle interface {
	// began: sub was made, or came back (a restore, a failover, a
	// claim). held: it is kept (not a fetch); quiet: tell nobody yet (a
	// start, whose NOTIFYs wait until every dialog is back and settled
	// follows).
	began(sub *Subscription, held, quiet bool)
	// settled: a start brought these subscriptions back, all at once.
	settled(subs []*Subscription)
	// membersChanged: a list subscription now watches added too, and
	// no longer gone (a reload changed its list).
	membersChanged(sub *Subscription, added, gone []string)
	// ended: sub ended, for reason (a Subscription-State reason, or
	// "timeout").
	ended(sub *Subscription, reason string)
}

// began tells every observer that sub began (lifecycle.began).
func (s *Server) began(sub *Subscription, held, quiet bool) {
	for _, l := range s.lifecycles {
		l.began(sub, held, quiet)
	}
}

// settled tells every observer that a start brought subs back.
func (s *Server) settled(subs []*Subscription) {
	for _, l := range s.lifecycles {
		l.settled(subs)
	}
}

// membersChanged tells every observer that a list's members changed.
func (s *Server) membersChanged(sub *Subscription, added, gone []string) {
	for _, l := range s.lifecycles {
		l.membersChanged(sub, added, gone)
	}
}

// ended tells every observer that sub ended.
func (s *Server) ended(sub *Subscription, reason string) {
	for _, l := range s.lifecycles {
		l.ended(sub, reason)
	}
}
