package durable

import (
	"fmt"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence"
)

// BenchmarkLoad reads back 10,000 saved subscriptions, as a restart does.
func BenchmarkLoad(b *testing.B) {
	dir := b.TempDir()
	db, err := Open(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	now := time.Now()
	var batch presence.Batch
	for i := range 10000 {
		batch.Subscriptions = append(batch.Subscriptions, presence.SavedSubscription{
			ID: fmt.Sprintf("%012dabcdefghijklmnop", i), CallID: fmt.Sprintf("%d-blf@192.0.2.7", i), RemoteTag: "8a9f1c",
			UserID: "debbie", Entity: "sip:100@pbx.test", Package: presence.PackageDialog,
			Accept: "application/dialog-info+xml", LocalURI: "sip:100@pbx.test", RemoteURI: "sip:201@pbx.test",
			Target: "sip:201@192.0.2.7:5062;transport=udp", Transport: "UDP", Source: "192.0.2.7:5062",
			UserAgent: "Yealink SIP-T54W 96.86.0.70", Expires: now.Add(time.Hour), RemoteCSeq: 3, CSeq: 64, Version: 65})
	}
	if err := db.Save(batch); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		saved, err := db.Load(now)
		if err != nil || len(saved.Subscriptions) != 10000 {
			b.Fatalf("%d subscriptions, %v", len(saved.Subscriptions), err)
		}
	}
}
