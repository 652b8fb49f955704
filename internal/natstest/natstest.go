// Package natstest starts real, embedded NATS servers with JetStream for
// tests: one per test, with its own store directory and a random port (Run),
// or a cluster of several in the test process (Cluster).
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/events"
)

// Server is a running embedded server and a client connection to it.
type Server struct {
	Server *server.Server
	Conn   *nats.Conn
	JS     jetstream.JetStream
	// StoreDir is the server's JetStream store directory.
	StoreDir string
}

// Run starts an embedded JetStream server on a random loopback port with a
// store in dir (a new temporary directory when dir is ""), connects to it and
// creates the broker's stream, buckets and object store. Everything is shut
// down when the test ends.
func Run(t testing.TB, dir string) *Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "natstest",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		t.Fatalf("creating nats-server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("connecting to nats-server: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	if err := events.Ensure(t.Context(), js, 1); err != nil {
		t.Fatalf("creating streams: %v", err)
	}
	return &Server{Server: srv, Conn: nc, JS: js, StoreDir: dir}
}

// IgnoreObjectStoreRace is a goleak option for an upstream race in nats.go
// v1.55.0: every object store Put makes a fresh JetStream context whose
// async publisher starts resetPendingAcksOnReconnect in a goroutine that
// reads its status channel under the publisher lock, while Put's deferred
// cleanupReplySub sets that channel to nil. When the cleanup wins, the
// goroutine waits on a nil channel for ever. Measured here: about 3 leaked
// goroutines per 1,000 small Puts (a few KiB each). The runner archives
// every attempt's logs with Put, so packages whose tests run it use this
// option. See docs/architecture.md, "Known upstream defects".
func IgnoreObjectStoreRace() goleak.Option {
	return goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect")
}

// Events reads every event matching the subjects (all when none are given)
// from the stream, in order, with their sequences. It reads until the
// consumer has nothing pending, so a pause of the stream (a leader change in
// a cluster) does not cut the list short.
func Events(t testing.TB, js jetstream.JetStream, subjects ...string) []events.Envelope {
	t.Helper()
	cons, err := js.OrderedConsumer(t.Context(), events.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
	if err != nil {
		t.Fatalf("reading the event stream: %v", err)
	}
	var out []events.Envelope
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("reading the event stream: still not at its end after 30s (%d events read)", len(out))
		}
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			continue // the ordered consumer recreates itself
		}
		n, pending := 0, uint64(1)
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				t.Fatalf("event metadata: %v", err)
			}
			env, err := events.Decode(m.Data())
			if err != nil {
				t.Fatalf("decoding event %d: %v", md.Sequence.Stream, err)
			}
			env.Seq = md.Sequence.Stream
			out = append(out, env)
			pending = md.NumPending
		}
		if n > 0 && pending == 0 {
			return out
		}
		if n == 0 {
			if info, err := cons.Info(t.Context()); err == nil && info.NumPending == 0 {
				return out
			}
		}
	}
}
