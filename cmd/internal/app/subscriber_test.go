package app_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/services/benchnoop"
	"github.com/cbroker/broker/services/runtime"
)

// permissionErrors records the asynchronous permission violations a
// connection is told about.
type permissionErrors struct {
	mu   sync.Mutex
	errs []string
}

func (p *permissionErrors) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err.Error())
}

func (p *permissionErrors) has(subject string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.errs {
		if strings.Contains(e, "Permissions Violation") && strings.Contains(e, subject) {
			return true
		}
	}
	return false
}

// TestSubscriberUser runs the broker with its built-in nats.conf and no
// NATS flags, as a newcomer does, and checks what the read-only subscriber
// user may and may not do.
func TestSubscriberUser(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := runApp(t, app.Config{
		Listen: "127.0.0.1:0", DataDir: dir, LocalNode: app.LocalNodeFalse, NATSListen: "127.0.0.1:-1",
		Runtimes: runtime.Set{benchnoop.Runtime{}}, HealthInterval: 50 * time.Millisecond, Instance: "sub",
	})
	url := b.app.NATSURL()
	pwFile := filepath.Join(dir, app.SubscriberPasswordFile)
	st, err := os.Stat(pwFile)
	require.NoError(t, err, "the subscriber password is kept in the data directory")
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	pw, err := os.ReadFile(pwFile)
	require.NoError(t, err)
	password := strings.TrimSpace(string(pw))
	require.NotEmpty(t, password)

	// Nobody gets in without the password.
	_, err = nats.Connect(url)
	require.ErrorIs(t, err, nats.ErrAuthorization)
	_, err = nats.Connect(url, nats.UserInfo(app.SubscriberUser, "wrong"))
	require.ErrorIs(t, err, nats.ErrAuthorization)
	_, err = nats.Connect(url, nats.UserInfo(app.BrokerUser, password))
	require.ErrorIs(t, err, nats.ErrAuthorization, "the broker's own password is not the subscriber's")

	denied := &permissionErrors{}
	nc, err := nats.Connect(url, nats.UserInfo(app.SubscriberUser, password), nats.ErrorHandler(denied.handler))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)

	// It creates a durable consumer and receives and acknowledges an event
	// the broker appended; it reads the views.
	cons, err := js.CreateOrUpdateConsumer(t.Context(), events.StreamName, jetstream.ConsumerConfig{
		Durable: "watcher", FilterSubjects: []string{"cb.ev.task.*.completed"}, AckPolicy: jetstream.AckExplicitPolicy,
	})
	require.NoError(t, err)
	id := runNoopTask(t, b) // the broker itself still works
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	require.NoError(t, err)
	var got []events.Envelope
	for m := range batch.Messages() {
		env, err := events.Decode(m.Data())
		require.NoError(t, err)
		got = append(got, env)
		require.NoError(t, m.DoubleAck(t.Context()))
	}
	require.Len(t, got, 1)
	require.Equal(t, id, got[0].AggregateID)
	require.Equal(t, events.TypeTaskCompleted, got[0].Type)
	tasks, err := js.KeyValue(t.Context(), events.BucketTasks)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assertT) {
		_, err := tasks.Get(t.Context(), id)
		require.NoError(c, err)
	}, 10*time.Second, 20*time.Millisecond)
	_, err = js.ResetConsumerToSequence(t.Context(), events.StreamName, "watcher", 1)
	require.NoError(t, err, "it may rewind its own consumer")
	require.NoError(t, js.DeleteConsumer(t.Context(), events.StreamName, "watcher"), "and delete it")

	// It cannot write: an event it publishes is refused and never stored.
	bjs := b.app.JetStream()
	stream, err := bjs.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	before, err := stream.Info(t.Context())
	require.NoError(t, err)
	fake, err := events.New("task:x:1:completed", &events.TaskCompleted{TaskID: "x", Attempt: 1}, events.Meta{})
	require.NoError(t, err)
	_, err = events.Append(short(t), js, fake)
	require.Error(t, err)
	require.Eventually(t, func() bool { return denied.has("cb.ev.task.x.completed") }, 5*time.Second, 10*time.Millisecond)
	_, err = stream.GetLastMsgForSubject(t.Context(), "cb.ev.task.x.completed")
	require.ErrorIs(t, err, jetstream.ErrMsgNotFound, "nothing was stored")

	// Nor create, change, purge or delete streams or messages.
	_, err = js.CreateStream(short(t), jetstream.StreamConfig{Name: "SNEAKY", Subjects: []string{"sneaky.>"}})
	require.Error(t, err)
	cfg := before.Config
	cfg.DenyPurge, cfg.DenyDelete = false, false
	_, err = js.UpdateStream(short(t), cfg)
	require.Error(t, err)
	s, err := js.Stream(t.Context(), events.StreamName)
	require.NoError(t, err, "it may look at the stream")
	require.Error(t, s.Purge(short(t)))
	require.Error(t, s.DeleteMsg(short(t), 1))
	require.Error(t, js.DeleteStream(short(t), events.StreamName))
	for _, api := range []string{"STREAM.CREATE.SNEAKY", "STREAM.UPDATE.CB_EVENTS", "STREAM.PURGE.CB_EVENTS", "STREAM.MSG.DELETE.CB_EVENTS", "STREAM.DELETE.CB_EVENTS"} {
		require.True(t, denied.has("$JS.API."+api), "%s was refused by permission, not merely timed out", api)
	}
	after, err := stream.Info(t.Context())
	require.NoError(t, err)
	require.Equal(t, before.Config, after.Config, "the stream is unchanged")
	require.GreaterOrEqual(t, after.State.Msgs, before.State.Msgs)
	require.Equal(t, before.State.FirstSeq, after.State.FirstSeq, "nothing was purged")
	_, err = bjs.Stream(t.Context(), "SNEAKY")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
	_, err = stream.GetMsg(t.Context(), 1)
	require.NoError(t, err, "the first event is still there")
}

// short is a context for a request that permissions refuse: the client
// hears of the refusal only asynchronously, and the request itself waits.
func short(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestSubscriberPasswordSurvivesARestart: the generated password is made
// once per data directory.
func TestSubscriberPasswordSurvivesARestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := app.Config{Listen: "127.0.0.1:0", DataDir: dir, NATSListen: "none", LocalNode: app.LocalNodeFalse, Runtimes: runtime.Set{benchnoop.Runtime{}}}
	a, err := app.New(t.Context(), cfg)
	require.NoError(t, err)
	a.Close()
	first, err := os.ReadFile(filepath.Join(dir, app.SubscriberPasswordFile))
	require.NoError(t, err)
	a, err = app.New(t.Context(), cfg)
	require.NoError(t, err)
	a.Close()
	again, err := os.ReadFile(filepath.Join(dir, app.SubscriberPasswordFile))
	require.NoError(t, err)
	require.Equal(t, string(first), string(again))
}

// TestExternalNATSWithUsers runs a NATS server with the repository's
// nats.conf, as an operator would, and the broker against it with the
// broker user's credentials.
func TestExternalNATSWithUsers(t *testing.T) {
	t.Parallel()
	conf, err := os.ReadFile(filepath.Join("..", "..", "..", "nats.conf"))
	require.NoError(t, err)
	opts := &server.Options{}
	vars := fmt.Sprintf("%s: %q\n%s: %q\n", app.VarBrokerPassword, "ext-broker", app.VarSubscriberPassword, "ext-subscriber")
	require.NoError(t, opts.ProcessConfigString(vars+string(conf)))
	opts.Host, opts.Port, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, t.TempDir(), true, true
	srv, err := server.NewServer(opts)
	require.NoError(t, err)
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	require.True(t, srv.ReadyForConnections(10*time.Second))

	cfg := app.Config{
		Listen: "127.0.0.1:0", NATSURL: srv.ClientURL(), LocalNode: app.LocalNodeFalse,
		Runtimes: runtime.Set{benchnoop.Runtime{}}, HealthInterval: 50 * time.Millisecond, Instance: "ext-users",
	}
	// Without credentials, or with wrong ones, the broker does not start;
	// its error does not show the password.
	_, err = app.New(t.Context(), cfg)
	require.ErrorIs(t, err, nats.ErrAuthorization)
	wrong := cfg
	wrong.NATSURL = strings.Replace(srv.ClientURL(), "nats://", "nats://broker:hunter2@", 1)
	_, err = app.New(t.Context(), wrong)
	require.ErrorIs(t, err, nats.ErrAuthorization)
	require.NotContains(t, err.Error(), "hunter2")

	inURL := cfg
	inURL.NATSURL = strings.Replace(srv.ClientURL(), "nats://", "nats://broker:ext-broker@", 1)
	a, err := app.New(t.Context(), inURL)
	require.NoError(t, err, "user and password in the URL")
	a.Close()

	cfg.NATSPassword = "ext-broker" // the user defaults to broker
	runNoopTask(t, runApp(t, cfg))
}
