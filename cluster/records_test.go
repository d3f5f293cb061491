package cluster

import (
	"sync"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/cluster/natstest"
)

// TestRecordsReachEveryNode: a record one node shares is applied on
// another, including one shared before the other started (read at its
// start), and its removal too; a record of a kind nobody follows is not
// taken for a person state.
func TestRecordsReachEveryNode(t *testing.T) {
	nats := natstest.Start(t, 1)
	a := newMember(t, "a", nats.URLs())
	a.node.ShareRecord("flow", "udp:192.0.2.7:5060", []byte(`{"user":"100"}`), time.Now().Add(time.Hour))
	a.node.ShareRecord("other", "debbie", []byte(`x`), time.Time{})
	waitFor(t, 5*time.Second, "a's records in the bucket", func() bool { return a.node.Status().Pending == 0 })

	var mu sync.Mutex
	held := map[string]string{}
	b := newMemberThen(t, "b", nats.URLs(), 1, func(n *Node) {
		n.FollowRecords("flow", func(id string, data []byte) {
			mu.Lock()
			defer mu.Unlock()
			if data == nil {
				delete(held, id)
			} else {
				held[id] = string(data)
			}
		})
	})
	holds := func(id, want string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			got, ok := held[id]
			return ok == (want != "") && got == want
		}
	}
	waitFor(t, 5*time.Second, "b holds the record shared before it started", holds("udp:192.0.2.7:5060", `{"user":"100"}`))

	a.node.ShareRecord("flow", "tcp:192.0.2.8:40000", []byte(`{"user":"101"}`), time.Now().Add(time.Hour))
	waitFor(t, 5*time.Second, "b holds a new record", holds("tcp:192.0.2.8:40000", `{"user":"101"}`))
	a.node.ShareRecord("flow", "udp:192.0.2.7:5060", nil, time.Time{})
	waitFor(t, 5*time.Second, "b drops a removed record", holds("udp:192.0.2.7:5060", ""))

	if st, _ := b.bridge.State("debbie"); st.Person.Note != "" || len(st.Person.Activities) != 0 {
		t.Errorf("a record of a kind nobody follows showed as debbie's state: %+v", st.Person)
	}
}
