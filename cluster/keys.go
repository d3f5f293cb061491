package cluster

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Keys every node must hold alike (proxy mode's token key, which signs
// the Path and Record-Route a PBX keeps) live in the shared bucket: the
// first node to offer its own key makes it the cluster's, and every other
// node takes the cluster's in place of its own. Anyone who may read the
// bucket may read the key: NATS credentials guard it, as they guard every
// other bucket.

// sharedKey is one key to agree on (ShareKey).
type sharedKey struct {
	name  string
	local []byte
	use   func([]byte)
}

// ShareKey makes local the cluster's key name unless another node's is
// already, in which case use is called with that one (once, from the
// node's goroutine, as soon as the engine answers). Call it before Run.
func (n *Node) ShareKey(name string, local []byte, use func([]byte)) {
	n.sharedKeys = append(n.sharedKeys, sharedKey{name: name, local: bytes.Clone(local), use: use})
}

// agreeKeys settles every shared key with the engine, trying again every
// second until it has.
func (n *Node) agreeKeys(ctx context.Context) {
	todo := n.sharedKeys
	for len(todo) > 0 {
		var left []sharedKey
		for _, k := range todo {
			if err := n.agreeKey(ctx, k); err != nil {
				n.failed("agreeing on the "+k.name, err)
				left = append(left, k)
			}
		}
		if todo = left; len(todo) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (n *Node) agreeKey(ctx context.Context, k sharedKey) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := n.shared.Create(ctx, k.name, k.local)
	if err == nil {
		n.log.Info("this node's key is the cluster's", "key", k.name)
		return nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	e, err := n.shared.Get(ctx, k.name)
	if err != nil {
		return err
	}
	if !bytes.Equal(e.Value(), k.local) {
		n.log.Info("taking the cluster's key in place of this node's", "key", k.name)
		k.use(bytes.Clone(e.Value()))
	}
	return nil
}
