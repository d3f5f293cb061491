package cluster

import (
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// Shared is this node's bridge as the SIP server and the API see it:
// every person state they set or clear here is also written for the
// other nodes, which apply it to theirs (the bridge itself stays as it
// is: PBX call state is followed by each node on its own).
type Shared struct {
	*bridge.Bridge
	node *Node
}

// Share wraps b so that person states set through it reach every node.
func (n *Node) Share(b *bridge.Bridge) *Shared { return &Shared{Bridge: b, node: n} }

// SetPerson sets a person state here and queues it for the other nodes.
func (s *Shared) SetPerson(userID, origin string, p bridge.PersonState) error {
	if p.Updated.IsZero() {
		p.Updated = time.Now() // the same on every node
	}
	if err := s.Bridge.SetPerson(userID, origin, p); err != nil {
		return err
	}
	s.node.share(userID, origin, &p)
	return nil
}

// ClearPerson clears a person state here and on the other nodes.
func (s *Shared) ClearPerson(userID, origin string) {
	s.Bridge.ClearPerson(userID, origin)
	s.node.share(userID, origin, nil)
}
