// Package app wires the broker together: the NATS connection (an embedded
// server or an external one), the event stream and buckets, the fold and the
// actors, and the HTTP API. Both `broker serve` and `broker bench` run it,
// and the end-to-end tests run it in-process.
package app

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/gateway"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/docker"
	"github.com/cbroker/broker/services/health"
	"github.com/cbroker/broker/services/lease"
	"github.com/cbroker/broker/services/runner"
	"github.com/cbroker/broker/services/runtime"
	"github.com/cbroker/broker/services/scheduler"
	"github.com/cbroker/broker/services/webhook"
)

// DefaultNATSConfig is the repository's nats.conf, built into the binary.
//
//go:embed nats.conf
var DefaultNATSConfig string

// Local node modes.
const (
	LocalNodeAuto  = "auto"
	LocalNodeTrue  = "true"
	LocalNodeFalse = "false"
)

// Config is everything the broker needs to run.
type Config struct {
	// Listen is the HTTP API's address. Defaults to 127.0.0.1:8080.
	Listen string
	// DataDir holds the embedded NATS server's store. Required unless
	// NATSURL is set.
	DataDir string
	// NATSURL connects to an external NATS server instead of starting one:
	// a comma-separated list of the servers of a cluster, among which the
	// connection moves when one fails. It may carry a user and password
	// (nats://user:password@host:4222).
	NATSURL string
	// Replicas is the replication of the stream, the KV buckets and the
	// object stores on an external server; they are created with it or
	// updated to it. 0 means auto: 3 when the server is a member of a
	// cluster, 1 otherwise, and 1 too when the cluster refuses three
	// replicas for lack of JetStream servers. The embedded server takes 1.
	Replicas int
	// NATSUser and NATSPassword log in to an external server (the user
	// defaults to BrokerUser when only a password is given); NATSCreds is a
	// credentials file (JWT and nkey) instead. In embedded mode NATSPassword
	// is the password of nats.conf's broker user (VarBrokerPassword); empty
	// means a random one for each start.
	NATSUser, NATSPassword, NATSCreds string
	// SubscriberPassword is the password of nats.conf's read-only
	// subscriber user in embedded mode (VarSubscriberPassword). Empty means
	// the one kept in <DataDir>/subscriber.password, created on first
	// start.
	SubscriberPassword string
	// NATSConfig is the embedded server's configuration file; "" uses
	// DefaultNATSConfig.
	NATSConfig string
	// NATSListen overrides the embedded server's client address
	// ("host:port", port -1 for a random one); "none" opens no TCP port.
	NATSListen string
	// LocalNode is auto (register the Docker engine at DOCKER_HOST or the
	// default socket when it answers), true (the same, but an engine must
	// answer) or false.
	LocalNode string
	// LocalNodeSlots are the local node's slots. Defaults to cpu=2.
	LocalNodeSlots map[string]int
	// Mounts map storage mount names to host paths.
	Mounts map[string]string
	// Runtimes run containers. Defaults to the Docker runtime.
	Runtimes runtime.Set
	// DockerCertPath holds ca.pem, cert.pem and key.pem for https:// nodes.
	DockerCertPath string
	// HealthInterval and HealthGrace tune the node health monitor.
	HealthInterval, HealthGrace time.Duration
	// StopGrace is how long a cancelled task's container has between SIGTERM
	// and SIGKILL. Defaults to 10s.
	StopGrace time.Duration
	// Retry policy of tasks that do not give their own: MaxRetries defaults
	// to 3 (negative: none); the backoff doubles from RetryBackoffMin up to
	// RetryBackoffMax with jitter (zero: retry at once); MaxNodeLosses
	// defaults to 5 (negative: none); TaskTimeout bounds an attempt (zero:
	// no limit).
	MaxRetries                       int
	RetryBackoffMin, RetryBackoffMax time.Duration
	MaxNodeLosses                    int
	TaskTimeout                      time.Duration
	// FailedTimeout is how long a task stays failed before it is marked as
	// error. Defaults to 20h, as the seed; negative disables it.
	FailedTimeout time.Duration
	// WebhookSecret keys the signatures of webhook deliveries. Without it,
	// tasks cannot give a callback_url and nothing is delivered.
	WebhookSecret string
	// WebhookMaxAttempts, WebhookBackoffMin, WebhookBackoffMax and
	// WebhookTimeout tune the deliveries; zero means the webhook package's
	// defaults (10 attempts, 1s doubling up to 5m, 10s per attempt).
	WebhookMaxAttempts                   int
	WebhookBackoffMin, WebhookBackoffMax time.Duration
	WebhookTimeout                       time.Duration
	// SnapshotEvery is how many events are folded between fold snapshots.
	// Defaults to 100,000; negative disables snapshots (start-up then folds
	// the whole log).
	SnapshotEvery int
	// SnapshotKeep is how many snapshots are kept. Defaults to 3.
	SnapshotKeep int
	// Roles are what this instance does (AllRoles by default): see
	// components.
	Roles []string
	// Instance names this process in the actor field of its events.
	// Defaults to the host name and process id.
	Instance string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	if c.LocalNode == "" {
		c.LocalNode = LocalNodeAuto
	}
	if len(c.LocalNodeSlots) == 0 {
		c.LocalNodeSlots = map[string]int{"cpu": 2}
	}
	if c.Instance == "" {
		host, _ := os.Hostname()
		c.Instance = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.FailedTimeout == 0 {
		c.FailedTimeout = 20 * time.Hour
	}
	if len(c.Roles) == 0 {
		c.Roles = AllRoles
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 100_000
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.DataDir == "" && c.NATSURL == "" {
		errs = append(errs, errors.New("a data directory or a NATS URL is required"))
	}
	if c.Replicas < 0 || (c.Replicas > 1 && c.NATSURL == "") {
		errs = append(errs, fmt.Errorf("replicas %d: want 0 (auto) or more, and more than 1 only with an external NATS cluster", c.Replicas))
	}
	if c.NATSCreds != "" && (c.NATSUser != "" || c.NATSPassword != "") {
		errs = append(errs, errors.New("give NATS credentials as a file or as user and password, not both"))
	}
	for _, r := range c.Roles {
		if !slices.Contains(AllRoles, r) {
			errs = append(errs, fmt.Errorf("unknown role %q; roles are %s", r, strings.Join(AllRoles, ", ")))
		}
	}
	switch c.LocalNode {
	case LocalNodeAuto, LocalNodeTrue, LocalNodeFalse:
	default:
		errs = append(errs, fmt.Errorf("local node must be auto, true or false, not %q", c.LocalNode))
	}
	for name, path := range c.Mounts {
		if name == "" || !filepath.IsAbs(path) {
			errs = append(errs, fmt.Errorf("storage mount %q=%q: want name=/absolute/host/path", name, path))
		}
	}
	if c.WebhookMaxAttempts < 0 || c.WebhookBackoffMin < 0 || c.WebhookBackoffMax < 0 || c.WebhookTimeout < 0 {
		errs = append(errs, errors.New("webhook attempts, backoff and timeout must not be negative"))
	}
	return errors.Join(errs...)
}

// App is a running broker's connections and components.
type App struct {
	cfg Config
	log *slog.Logger

	srv *server.Server // nil with an external NATS
	nc  *nats.Conn
	js  jetstream.JetStream
	ln  net.Listener

	// BrokerID identifies this broker's event store; it labels every
	// container the broker creates.
	BrokerID string
	// Replica is the process's fold.
	Replica   *projections.Replica
	docker    *docker.Runtime
	snapshots *projections.Snapshots
	// Owner holds this instance's node leases (runner role); nil otherwise.
	Owner *lease.Owner
	// leases is the lease configuration of this instance's singletons and
	// node ownership, opened once by New.
	leases lease.Config
}

// New connects to NATS (starting the embedded server if needed), makes sure
// the stream, buckets and object store exist, and opens the HTTP listener.
// Call Run, or Close if Run is never called.
func New(ctx context.Context, cfg Config) (*App, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	a := &App{cfg: cfg, log: cfg.Logger}
	if len(cfg.Runtimes) == 0 {
		a.docker = docker.New(docker.Config{Logger: cfg.Logger, CertPath: cfg.DockerCertPath})
		a.cfg.Runtimes = runtime.Set{a.docker}
	}
	if err := a.open(ctx); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// OpenStore connects to the broker's event store as New does (starting the
// embedded NATS server on cfg.DataDir unless cfg.NATSURL is set) without
// starting any component: the CLI's commands on the log use it. Close
// releases it.
func OpenStore(ctx context.Context, cfg Config) (*App, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	a := &App{cfg: cfg, log: cfg.Logger}
	if err := a.connect(ctx); err != nil {
		a.Close()
		return nil, err
	}
	var err error
	if a.snapshots, err = projections.OpenSnapshots(ctx, a.js, a.log); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Snapshots is the fold snapshot store.
func (a *App) Snapshots() *projections.Snapshots { return a.snapshots }

func (a *App) open(ctx context.Context) error {
	if err := a.connect(ctx); err != nil {
		return err
	}
	// Each opening asks an asset's leader, which a cluster may be electing.
	err := events.Retry(ctx, a.log, "opening the event store", time.Second, func(ctx context.Context) error {
		var err error
		if a.BrokerID, err = brokerID(ctx, a.js); err != nil {
			return err
		}
		if a.snapshots, err = projections.OpenSnapshots(ctx, a.js, a.log); err != nil {
			return err
		}
		a.leases, err = a.openLeases(ctx)
		return err
	})
	if err != nil {
		return err
	}
	if a.Replica, err = projections.NewReplica(projections.ReplicaConfig{JetStream: a.js, Logger: a.log, Snapshots: a.snapshots}); err != nil {
		return err
	}
	if a.has(RoleRunner) {
		if a.Owner, err = lease.NewOwner(a.leases, a.Replica); err != nil {
			return err
		}
	}
	if !a.has(RoleGateway) {
		return nil
	}
	if a.ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", a.cfg.Listen); err != nil {
		return fmt.Errorf("http api: %w", err)
	}
	return nil
}

// connect connects to NATS (an external server or a new embedded one) and
// ensures the stream, buckets and object stores.
func (a *App) connect(ctx context.Context) error {
	var err error
	if a.cfg.NATSURL != "" {
		// The URLs of a cluster's other servers come with the first server's
		// INFO too, so the connection fails over even to servers not listed.
		opts := append(connectionEvents(a.log),
			nats.Name("broker "+a.cfg.Instance), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
		a.nc, err = nats.Connect(a.cfg.NATSURL, append(opts, a.cfg.externalLogin()...)...)
		if err != nil {
			return fmt.Errorf("connecting to %s: %w", redactURLs(a.cfg.NATSURL), err)
		}
		a.log.InfoContext(ctx, "connected to nats", slog.String("server", a.nc.ConnectedServerName()),
			slog.String("cluster", a.nc.ConnectedClusterName()), slog.String("url", a.nc.ConnectedUrlRedacted()))
	} else if err := a.startEmbedded(); err != nil {
		return err
	}
	// Asynchronous appends whose stream leader died are never answered:
	// time them out rather than keep them pending for ever.
	if a.js, err = jetstream.New(a.nc, jetstream.WithPublishAsyncTimeout(events.AckTimeout)); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	return a.ensure(ctx)
}

// connectionEvents logs the connection's losses, reconnections and
// asynchronous errors (such as a denied permission).
func connectionEvents(log *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats connection lost; reconnecting", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", slog.String("server", nc.ConnectedServerName()), slog.String("url", nc.ConnectedUrlRedacted()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("nats error", slog.String("subject", subject), slog.Any("error", err))
		}),
	}
}

// ensure creates or updates the stream, buckets and object stores with the
// configured replication (see Config.Replicas), retrying while JetStream is
// not ready yet (a new cluster takes a few seconds to elect its leader).
func (a *App) ensure(ctx context.Context) error {
	replicas, auto := a.cfg.Replicas, a.cfg.Replicas == 0
	if auto {
		// A client cannot see how many servers a cluster's JetStream has
		// (that takes the system account), and the URLs a cluster
		// advertises are not one per server. So: ask a cluster for three
		// and let its placement refuse.
		replicas = 1
		if a.srv == nil && a.nc.ConnectedClusterName() != "" {
			replicas = 3
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := events.Ensure(cctx, a.js, replicas)
		cancel()
		switch {
		case err == nil:
			a.log.InfoContext(ctx, "event store ready", slog.Int("replicas", replicas), slog.Bool("auto", auto))
			return nil
		case auto && replicas > 1 && tooFewServers(err):
			a.log.WarnContext(ctx, "the nats cluster cannot place 3 replicas; using 1 (--replicas sets it)", slog.Any("error", err))
			replicas = 1
			continue
		case time.Now().After(deadline) || ctx.Err() != nil:
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// tooFewServers reports whether JetStream refused a replication for lack of
// servers: no suitable peers for placement (10005), or replicas on a
// server that is not clustered (10074).
func tooFewServers(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == 10005 || apiErr.ErrorCode == 10074)
}

func (a *App) startEmbedded() error {
	vars, err := a.embeddedVars()
	if err != nil {
		return err
	}
	opts := &server.Options{}
	if err := processNATSConfig(opts, a.cfg.NATSConfig, vars); err != nil {
		return err
	}
	login, err := embeddedLogin(opts, vars)
	if err != nil {
		return err
	}
	opts.JetStream = true
	opts.StoreDir = filepath.Join(a.cfg.DataDir, "nats")
	opts.NoSigs = true
	opts.NoLog = true
	switch a.cfg.NATSListen {
	case "":
	case "none":
		opts.DontListen = true
	default:
		host, port, err := net.SplitHostPort(a.cfg.NATSListen)
		if err != nil {
			return fmt.Errorf("nats listen address %q: %w", a.cfg.NATSListen, err)
		}
		if opts.Port, err = strconv.Atoi(port); err != nil {
			return fmt.Errorf("nats listen address %q: %w", a.cfg.NATSListen, err)
		}
		opts.Host = host
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("embedded nats server: %w", err)
	}
	srv.Start()
	a.srv = srv
	if !srv.ReadyForConnections(30 * time.Second) {
		return errors.New("embedded nats server did not start in 30s")
	}
	connOpts := []nats.Option{nats.InProcessServer(srv), nats.Name("broker " + a.cfg.Instance)}
	if login != nil {
		connOpts = append(connOpts, login)
	}
	a.nc, err = nats.Connect("", connOpts...)
	if err != nil {
		return fmt.Errorf("connecting to the embedded nats server: %w", err)
	}
	a.log.Info("embedded nats server started", slog.String("store_dir", opts.StoreDir),
		slog.String("client_url", clientURL(srv, opts)))
	if hasUser(opts, SubscriberUser) && a.cfg.SubscriberPassword == "" {
		a.log.Info("read-only nats user for event subscribers", slog.String("user", SubscriberUser),
			slog.String("password_file", filepath.Join(a.cfg.DataDir, SubscriberPasswordFile)))
	}
	return nil
}

func clientURL(srv *server.Server, opts *server.Options) string {
	if opts.DontListen {
		return "none"
	}
	return srv.ClientURL()
}

// brokerID reads the id of this event store, creating it the first time.
func brokerID(ctx context.Context, js jetstream.JetStream) (string, error) {
	kv, err := js.KeyValue(ctx, events.BucketMeta)
	if err != nil {
		return "", fmt.Errorf("opening %s: %w", events.BucketMeta, err)
	}
	if _, err := kv.Create(ctx, events.KeyBrokerID, []byte(uuid.NewString())); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return "", fmt.Errorf("creating the broker id: %w", err)
	}
	e, err := kv.Get(ctx, events.KeyBrokerID)
	if err != nil {
		return "", fmt.Errorf("reading the broker id: %w", err)
	}
	return string(e.Value()), nil
}

// Addr is the HTTP API's address, or "" without the gateway role.
func (a *App) Addr() string {
	if a.ln == nil {
		return ""
	}
	return a.ln.Addr().String()
}

// JetStream returns the app's JetStream handle.
func (a *App) JetStream() jetstream.JetStream { return a.js }

// NATSURL is the embedded server's client URL, or "" when it does not listen.
func (a *App) NATSURL() string {
	if a.srv == nil || a.srv.Addr() == nil {
		return ""
	}
	return a.srv.ClientURL()
}

func (a *App) writer(role string) *actor.Writer {
	return &actor.Writer{JS: a.js, Actor: a.cfg.Instance + "/" + role, Logger: a.log}
}

// Run runs every component until ctx is done or one fails, then shuts
// everything down in order: components, the NATS connection, the embedded
// server.
func (a *App) Run(ctx context.Context) error {
	defer a.Close()
	components, err := a.components(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for name, run := range components {
		wg.Go(func() {
			if err := run(ctx); err != nil {
				a.log.ErrorContext(ctx, "component failed", slog.String("component", name), slog.Any("error", err))
				cancel(fmt.Errorf("%s: %w", name, err))
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// Roles a broker instance may take (Config.Roles).
const (
	RoleGateway   = "gateway"
	RoleScheduler = "scheduler"
	RoleRunner    = "runner"
	RoleProjector = "projector"
)

// AllRoles is the default: one instance does everything.
var AllRoles = []string{RoleGateway, RoleScheduler, RoleRunner, RoleProjector}

func (a *App) has(role string) bool { return slices.Contains(a.cfg.Roles, role) }

// openLeases returns the lease configuration of this instance.
func (a *App) openLeases(ctx context.Context) (lease.Config, error) {
	kv, err := a.js.KeyValue(ctx, events.BucketLeases)
	if err != nil {
		return lease.Config{}, fmt.Errorf("opening bucket %s: %w", events.BucketLeases, err)
	}
	return lease.Config{KV: kv, Holder: a.cfg.Instance, Logger: a.log}, nil
}

// singleton runs a component only while this instance holds its lease.
func singleton(cfg lease.Config, name string, run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error { return lease.Singleton(ctx, cfg, name, run) }
}

// components returns the components of this instance's roles: the fold
// always; the HTTP API (gateway); the scheduler, active on one instance at a
// time (scheduler); the node owner, runner, health monitor and local node
// (runner); the projector and webhook sender, each active on one instance at
// a time, and the snapshotter (projector).
func (a *App) components(ctx context.Context) (map[string]func(context.Context) error, error) {
	leases := a.leases
	components := map[string]func(context.Context) error{"replica": a.Replica.Run}
	if a.has(RoleGateway) {
		hub, err := gateway.NewHub(gateway.HubConfig{JetStream: a.js, Replica: a.Replica, Logger: a.log})
		if err != nil {
			return nil, err
		}
		components["events"] = hub.Run
		gw, err := gateway.New(gateway.Config{
			Replica: a.Replica, JetStream: a.js, Mounts: a.cfg.Mounts, Actor: a.cfg.Instance + "/gateway", Logger: a.log, Events: hub,
			MaxRetries: a.cfg.MaxRetries, RetryBackoffMin: a.cfg.RetryBackoffMin, RetryBackoffMax: a.cfg.RetryBackoffMax,
			MaxNodeLosses: a.cfg.MaxNodeLosses, TaskTimeout: a.cfg.TaskTimeout, Webhooks: a.cfg.WebhookSecret != "",
			Logs:          &runner.LogReader{Replica: a.Replica, JS: a.js, Runtimes: a.cfg.Runtimes},
			CheckHostname: checkHostname,
			Snapshots:     a.snapshots,
		})
		if err != nil {
			return nil, err
		}
		components["gateway"] = func(ctx context.Context) error { return gw.Serve(ctx, a.ln) }
	}
	if a.has(RoleScheduler) {
		sched, err := scheduler.New(scheduler.Config{
			Replica: a.Replica, Writer: a.writer("scheduler"), Logger: a.log,
			Policy: scheduler.Policy{FailedTimeout: max(a.cfg.FailedTimeout, 0), Mounts: mountNames(a.cfg.Mounts)},
		})
		if err != nil {
			return nil, err
		}
		components["scheduler"] = singleton(leases, "scheduler", sched.Run)
	}
	if a.has(RoleRunner) {
		owner := a.Owner
		run, err := runner.New(runner.Config{
			Replica: a.Replica, Writer: a.writer("runner"), JetStream: a.js,
			Runtimes: a.cfg.Runtimes, BrokerID: a.BrokerID, Mounts: a.cfg.Mounts, Logger: a.log, StopGrace: a.cfg.StopGrace,
			Owns: owner.Owns, OwnerChanged: owner.Changed,
		})
		if err != nil {
			return nil, err
		}
		monitor, err := health.New(health.Config{
			Replica: a.Replica, Writer: a.writer("health"), Runtimes: a.cfg.Runtimes,
			Interval: a.cfg.HealthInterval, Grace: a.cfg.HealthGrace, Logger: a.log, Owns: owner.Owns,
		})
		if err != nil {
			return nil, err
		}
		components["owner"] = owner.Run
		components["runner"] = run.Run
		components["health"] = monitor.Run
		components["local-node"] = a.registerLocalNode
	}
	if a.has(RoleProjector) {
		var projector *projections.Projector
		err := events.Retry(ctx, a.log, "opening the view buckets", time.Second, func(ctx context.Context) error {
			var err error
			projector, err = projections.NewProjector(ctx, projections.ProjectorConfig{JetStream: a.js, Replica: a.Replica, Logger: a.log})
			return err
		})
		if err != nil {
			return nil, err
		}
		components["projector"] = singleton(leases, "projector", projector.Run)
		if a.cfg.SnapshotEvery > 0 {
			snapshotter, err := projections.NewSnapshotter(projections.SnapshotterConfig{
				JetStream: a.js, Snapshots: a.snapshots, Every: uint64(a.cfg.SnapshotEvery), Keep: a.cfg.SnapshotKeep, Logger: a.log,
			})
			if err != nil {
				return nil, err
			}
			components["snapshotter"] = snapshotter.Run
		}
		if a.cfg.WebhookSecret != "" {
			hooks, err := webhook.New(webhook.Config{
				Replica: a.Replica, Writer: a.writer("webhook"), JetStream: a.js, Secret: []byte(a.cfg.WebhookSecret),
				MaxAttempts: a.cfg.WebhookMaxAttempts, BackoffMin: a.cfg.WebhookBackoffMin, BackoffMax: a.cfg.WebhookBackoffMax,
				Timeout: a.cfg.WebhookTimeout, Logger: a.log,
			})
			if err != nil {
				return nil, err
			}
			components["webhook"] = singleton(leases, "webhook", hooks.Run)
		}
	}
	return components, nil
}

func mountNames(mounts map[string]string) map[string]bool {
	names := make(map[string]bool, len(mounts))
	for name := range mounts {
		names[name] = true
	}
	return names
}

// checkHostname accepts the Docker addresses a node may have.
func checkHostname(hostname string) error {
	_, err := docker.ParseHost(hostname)
	return err
}

// Close releases everything New opened. Run calls it.
func (a *App) Close() {
	if a.ln != nil {
		_ = a.ln.Close()
	}
	if a.nc != nil {
		if err := a.nc.Drain(); err == nil {
			for i := 0; i < 100 && !a.nc.IsClosed(); i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
		a.nc.Close()
	}
	if a.srv != nil {
		a.srv.Shutdown()
		a.srv.WaitForShutdown()
	}
	if a.docker != nil {
		_ = a.docker.Close()
	}
}

// RegisterNode registers a node unless one with its hostname exists, and
// returns its id. The id is derived from the hostname, so that two brokers
// registering the same engine at once store one registration.
func (a *App) RegisterNode(ctx context.Context, hostname string, slots map[string]int) (string, error) {
	select {
	case <-a.Replica.Ready():
	case <-ctx.Done():
		return "", ctx.Err()
	}
	var existing *projections.Node
	a.Replica.Read(func(s *projections.State) {
		if n, ok := s.NodeByHostname(hostname); ok {
			c := *n
			existing = &c
		}
	})
	if existing != nil {
		if !equalSlots(existing.SlotsWanted, slots) {
			a.log.WarnContext(ctx, "node already registered with other slots; keeping them",
				slog.String("hostname", hostname), slog.Any("slots", existing.SlotsWanted))
		}
		return existing.ID, nil
	}
	id := uuid.NewSHA1(uuid.NameSpaceURL, []byte("cbroker-node:"+hostname)).String()
	acks, err := a.writer("local-node").Propose(ctx, actor.Proposal{
		Key:     "node:" + id + ":registered",
		Payload: &events.NodeRegistered{NodeID: id, Hostname: hostname, Slots: slots, RunnerProvider: "docker", RegisteredAt: events.Time(time.Now())},
	})
	if err != nil {
		return "", err
	}
	out, err := a.Replica.WaitSeq(ctx, acks[0].Seq)
	if err != nil {
		return "", err
	}
	if !out.Accepted && out.Code != projections.CodeExists && out.Code != projections.CodeHostnameTaken {
		return "", fmt.Errorf("registering node %s: %s", hostname, out.Reason)
	}
	a.log.InfoContext(ctx, "node registered", slog.String("node_id", id), slog.String("hostname", hostname), slog.Any("slots", slots))
	return id, nil
}

func equalSlots(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// LocalDockerHost is the Docker engine the local node mode looks for:
// DOCKER_HOST, or the default socket.
func LocalDockerHost() string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return h
	}
	return "unix:///var/run/docker.sock"
}

func (a *App) registerLocalNode(ctx context.Context) error {
	if a.cfg.LocalNode == LocalNodeFalse {
		return nil
	}
	host := LocalDockerHost()
	rt, ok := a.cfg.Runtimes.For(host)
	var err error
	if !ok {
		err = fmt.Errorf("unsupported Docker address %q", host)
	} else {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = rt.Ping(pctx, runtime.Node{Hostname: host})
		cancel()
	}
	if err != nil {
		if a.cfg.LocalNode == LocalNodeTrue {
			return fmt.Errorf("local Docker engine %s: %w", host, err)
		}
		a.log.InfoContext(ctx, "no local Docker engine answers; not registering a local node (POST /nodes adds one)",
			slog.String("docker_host", host), slog.Any("error", err))
		return nil
	}
	if _, err := a.RegisterNode(ctx, host, a.cfg.LocalNodeSlots); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// ParseSlots parses "cpu=2,network=10".
func ParseSlots(s string) (map[string]int, error) {
	out := map[string]int{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, count, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(strings.TrimSpace(count))
		if !ok || err != nil || n < 0 || strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("slots %q: want type=count[,type=count...]", s)
		}
		out[strings.TrimSpace(name)] = n
	}
	return out, nil
}
