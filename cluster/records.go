package cluster

import (
	"bytes"
	"strings"
	"time"
)

// Records are small things other than person states that every node must
// hold alike and that a node learns one at a time: proxy mode's
// registrations (a phone's flow, which its SUBSCRIBEs are trusted by, so
// that after a failover the node taking over knows it). Each record is a
// key of the persons bucket under an origin of its kind, which no person
// state can have (the NUL), so records are written, ordered by revision,
// hinted, applied and swept exactly as person states are: a removed one
// after the tombstone age, one whose Until has passed after lapsedAge.

// recordPrefix begins every record kind's origin.
const recordPrefix = "\x00record:"

// recordOrigin is the origin of a kind's records.
func recordOrigin(kind string) string { return recordPrefix + kind }

// ShareRecord queues a record of kind for the other nodes: data (nil:
// removed), which lapses at until (zero: never).
func (n *Node) ShareRecord(kind, id string, data []byte, until time.Time) {
	n.publish(&personValue{Node: n.cfg.Node, User: id, Origin: recordOrigin(kind), Cleared: data == nil,
		Record: bytes.Clone(data), Until: until, Seq: n.writeSeq.Add(1)})
}

// FollowRecords has apply called with every record of kind that another
// node shares (data nil: removed), from the node's goroutines, including
// those the engine holds when the node starts. Call it before Run.
func (n *Node) FollowRecords(kind string, apply func(id string, data []byte)) {
	n.followers[recordOrigin(kind)] = apply
}

// showRecord applies a record here; it reports false for an origin that
// is not a record kind's (a record of a kind this node does not follow
// is passed over).
func (n *Node) showRecord(id, origin string, v *personValue, put bool) bool {
	if !strings.HasPrefix(origin, recordPrefix) {
		return false
	}
	apply, ok := n.followers[origin]
	if !ok {
		return true
	}
	if put && !v.Cleared && v.Record != nil {
		apply(id, v.Record)
	} else {
		apply(id, nil)
	}
	n.stats.Applied.Add(1)
	return true
}
