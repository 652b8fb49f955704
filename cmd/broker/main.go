// Command broker runs the container broker: `broker serve` starts it with
// an embedded NATS server (or against an external one), `broker bench`
// measures its control plane.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/cmd/internal/audit"
	"github.com/cbroker/broker/cmd/internal/bench"
	"github.com/cbroker/broker/cmd/internal/replay"
	"github.com/cbroker/broker/projections"
)

type cli struct {
	LogLevel  string `name:"log-level" default:"info" enum:"debug,info,warn,error" env:"BROKER_LOG_LEVEL" help:"Log level: debug, info, warn, error."`
	LogFormat string `name:"log-format" default:"text" enum:"text,json" env:"BROKER_LOG_FORMAT" help:"Log format: text or json."`

	Serve       serveCmd       `cmd:"" help:"Run the broker: the HTTP API, the scheduler, the runners, the health monitor and the projector."`
	Bench       benchCmd       `cmd:"" help:"Measure the control plane: task lifecycles per second with a no-op runtime (benchmark only)."`
	Audit       auditCmd       `cmd:"" help:"Print a history from the log for people."`
	Replay      replayCmd      `cmd:"" help:"Print the pool (nodes, slots, jobs, queues, tasks) as it stood at a point of the log."`
	Projections projectionsCmd `cmd:"" help:"Manage the KV views projected from the log."`
}

type replayCmd struct {
	At    string `name:"at" required:"" help:"The point of the log: a stream sequence (1234) or an RFC 3339 time (2026-11-27T12:00:00Z)."`
	API   string `name:"api" default:"http://127.0.0.1:8080" env:"BROKER_API" help:"The broker's HTTP API."`
	Tasks int    `name:"tasks" default:"20" help:"How many of the newest tasks to list (0: none)."`
	JSON  bool   `name:"json" help:"Print the API's JSON answers instead of tables."`
}

func (r *replayCmd) Run(ctx context.Context) error {
	return replay.Show(ctx, replay.Options{API: r.API, At: r.At, Tasks: r.Tasks, JSON: r.JSON}, os.Stdout)
}

type projectionsCmd struct {
	Rebuild rebuildCmd `cmd:"" help:"Drop the task and node views and write them again from the log. Run it while no broker is running on the store."`
}

type rebuildCmd struct {
	DataDir string `name:"data-dir" default:"./broker-data" env:"BROKER_DATA_DIR" help:"Data directory of the stopped broker whose embedded store to rebuild."`
	NATSURL string `name:"nats-url" env:"BROKER_NATS_URL" help:"Rebuild on this external NATS server instead (stop every broker's projector first)."`
}

func (r *rebuildCmd) Run(ctx context.Context, log *slog.Logger) error {
	store, err := app.OpenStore(ctx, app.Config{DataDir: r.DataDir, NATSURL: r.NATSURL, NATSListen: "none", Logger: log})
	if err != nil {
		return err
	}
	defer store.Close()
	res, err := projections.Rebuild(ctx, store.JetStream(), store.Snapshots(), log, time.Now())
	if err != nil {
		return err
	}
	fmt.Printf("rebuilt %d task views and %d node views at sequence %d in %v\n", res.Tasks, res.Nodes, res.Seq, res.Took.Round(time.Millisecond))
	return nil
}

type auditCmd struct {
	Task auditTaskCmd `cmd:"" help:"Every event of a task in log order, rejected proposals included, with the fold's verdicts."`
}

type auditTaskCmd struct {
	UUID string `arg:"" help:"The task's uuid."`
	API  string `name:"api" default:"http://127.0.0.1:8080" env:"BROKER_API" help:"The broker's HTTP API."`
}

func (a *auditTaskCmd) Run(ctx context.Context) error {
	return audit.Task(ctx, a.API, a.UUID, os.Stdout)
}

type serveCmd struct {
	Listen          string            `name:"listen" default:"127.0.0.1:8080" env:"BROKER_LISTEN" help:"Address of the HTTP API."`
	DataDir         string            `name:"data-dir" default:"./broker-data" env:"BROKER_DATA_DIR" help:"Directory of the embedded NATS server's store."`
	NATSURL         string            `name:"nats-url" env:"BROKER_NATS_URL" help:"Use this external NATS server (comma-separated URLs, nats://user:password@host:4222 works) instead of the embedded one."`
	Replicas        int               `name:"replicas" default:"0" env:"BROKER_REPLICAS" help:"With --nats-url: replication of the event stream, KV buckets and object stores (0: 3 on a cluster of three or more servers, else 1)."`
	NATSUser        string            `name:"nats-user" env:"BROKER_NATS_USER" help:"With --nats-url: the user to log in as (default broker when a password is given)."`
	NATSPassword    string            `name:"nats-password" env:"BROKER_NATS_PASSWORD" help:"Password of nats.conf's broker user. Embedded: sets it (default: random for each start); with --nats-url: the password to log in with."`
	NATSCreds       string            `name:"nats-creds" env:"BROKER_NATS_CREDS" help:"With --nats-url: a NATS credentials file (JWT and nkey) to log in with."`
	SubscriberPass  string            `name:"nats-subscriber-password" env:"BROKER_NATS_SUBSCRIBER_PASSWORD" help:"Embedded: password of nats.conf's read-only subscriber user (default: generated once and kept in <data-dir>/subscriber.password)."`
	NATSConfig      string            `name:"nats-config" env:"BROKER_NATS_CONFIG" help:"Configuration file of the embedded NATS server, in the format of the repository's nats.conf (default: that file, built in)."`
	NATSListen      string            `name:"nats-listen" env:"BROKER_NATS_LISTEN" help:"Client address of the embedded NATS server, overriding nats.conf (host:port; port -1 picks one; none opens no port)."`
	LocalNode       string            `name:"local-node" default:"auto" enum:"auto,true,false" env:"BROKER_LOCAL_NODE" help:"Register the Docker engine at DOCKER_HOST or the default socket as a node: auto (when it answers), true (it must), false."`
	LocalNodeSlots  string            `name:"local-node-slots" default:"cpu=2" env:"BROKER_LOCAL_NODE_SLOTS" help:"Slots of the local node, e.g. cpu=2,network=10."`
	StorageMount    map[string]string `name:"storage-mount" env:"BROKER_STORAGE_MOUNTS" mapsep:"," help:"Storage mount tasks may use, name=/host/path (repeatable)."`
	HealthInterval  time.Duration     `name:"health-interval" default:"1s" env:"BROKER_HEALTH_INTERVAL" help:"Interval of the nodes' health probes."`
	HealthGrace     time.Duration     `name:"health-grace" default:"5s" env:"BROKER_HEALTH_GRACE" help:"How long a node may fail its probes before it is declared down."`
	DockerCertPath  string            `name:"docker-cert-path" env:"BROKER_DOCKER_CERT_PATH,DOCKER_CERT_PATH" help:"Directory with ca.pem, cert.pem and key.pem: the broker's client certificate for https:// nodes (Docker's TLS on 2376)."`
	MaxRetries      int               `name:"max-retries" default:"3" env:"BROKER_MAX_RETRIES" help:"Retries of a task that does not give max_retries (the seed's task_retry_count)."`
	RetryBackoffMin time.Duration     `name:"retry-backoff-min" default:"1s" env:"BROKER_RETRY_BACKOFF_MIN" help:"Pause before a first retry; it doubles with every retry, with jitter (0: retry at once, as the seed)."`
	RetryBackoffMax time.Duration     `name:"retry-backoff-max" default:"1m" env:"BROKER_RETRY_BACKOFF_MAX" help:"Longest pause before a retry."`
	MaxNodeLosses   int               `name:"max-node-losses" default:"5" env:"BROKER_MAX_NODE_LOSSES" help:"How often a task's attempt may be lost with its node before the task fails (these do not use up retries)."`
	TaskTimeout     time.Duration     `name:"task-timeout" default:"0s" env:"BROKER_TASK_TIMEOUT" help:"Longest run of an attempt of a task that does not give a timeout (0: no limit)."`
	StopGrace       time.Duration     `name:"stop-grace" default:"10s" env:"BROKER_STOP_GRACE" help:"Time a cancelled task's container has between SIGTERM and SIGKILL."`
	Roles           []string          `name:"roles" default:"gateway,scheduler,runner,projector" env:"BROKER_ROLES" help:"What this instance does: gateway (HTTP API), scheduler (one active at a time), runner (containers and health probes of the nodes it owns), projector (KV views, snapshots, webhooks; one active at a time)."`
	SnapshotEvery   int               `name:"snapshot-every" default:"100000" env:"BROKER_SNAPSHOT_EVERY" help:"Take a fold snapshot every this many events, so that start-up and replays need not fold the whole log (0: never)."`
	SnapshotKeep    int               `name:"snapshot-keep" default:"3" env:"BROKER_SNAPSHOT_KEEP" help:"How many fold snapshots to keep."`
	FailedTimeout   time.Duration     `name:"failed-timeout" default:"20h" env:"BROKER_FAILED_TIMEOUT" help:"How long a task stays failed before it is marked as error (the seed's timeout_tasks_after_hours); 0 disables it."`

	WebhookSecret      string        `name:"webhook-secret" env:"BROKER_WEBHOOK_SECRET,CB_WEBHOOK_SECRET" help:"Key of the HMAC-SHA256 signature of webhook deliveries (prefer the environment variable). Without it, tasks cannot give a callback_url."`
	WebhookMaxAttempts int           `name:"webhook-max-attempts" default:"10" env:"BROKER_WEBHOOK_MAX_ATTEMPTS" help:"Attempts of a webhook delivery before it is abandoned."`
	WebhookBackoffMin  time.Duration `name:"webhook-backoff-min" default:"1s" env:"BROKER_WEBHOOK_BACKOFF_MIN" help:"Pause after a first failed webhook attempt; it doubles with every attempt, with jitter."`
	WebhookBackoffMax  time.Duration `name:"webhook-backoff-max" default:"5m" env:"BROKER_WEBHOOK_BACKOFF_MAX" help:"Longest pause between webhook attempts."`
	WebhookTimeout     time.Duration `name:"webhook-timeout" default:"10s" env:"BROKER_WEBHOOK_TIMEOUT" help:"Time a webhook receiver has to answer one attempt."`
}

func (s *serveCmd) Run(ctx context.Context, log *slog.Logger) error {
	slots, err := app.ParseSlots(s.LocalNodeSlots)
	if err != nil {
		return err
	}
	a, err := app.New(ctx, app.Config{
		Listen: s.Listen, DataDir: s.DataDir, NATSURL: s.NATSURL, Replicas: s.Replicas, NATSConfig: s.NATSConfig, NATSListen: s.NATSListen,
		NATSUser: s.NATSUser, NATSPassword: s.NATSPassword, NATSCreds: s.NATSCreds, SubscriberPassword: s.SubscriberPass,
		LocalNode: s.LocalNode, LocalNodeSlots: slots, Mounts: s.StorageMount,
		HealthInterval: s.HealthInterval, HealthGrace: s.HealthGrace, StopGrace: s.StopGrace, DockerCertPath: s.DockerCertPath,
		FailedTimeout: failedTimeout(s.FailedTimeout), Logger: log,
		MaxRetries: zeroAsNone(s.MaxRetries), RetryBackoffMin: s.RetryBackoffMin, RetryBackoffMax: s.RetryBackoffMax,
		MaxNodeLosses: zeroAsNone(s.MaxNodeLosses), TaskTimeout: s.TaskTimeout,
		SnapshotEvery: zeroAsNone(s.SnapshotEvery), SnapshotKeep: s.SnapshotKeep, Roles: s.Roles,
		WebhookSecret: s.WebhookSecret, WebhookMaxAttempts: s.WebhookMaxAttempts,
		WebhookBackoffMin: s.WebhookBackoffMin, WebhookBackoffMax: s.WebhookBackoffMax, WebhookTimeout: s.WebhookTimeout,
	})
	if err != nil {
		return err
	}
	log.InfoContext(ctx, "broker serving", slog.String("http", "http://"+a.Addr()), slog.String("broker_id", a.BrokerID))
	if err := a.Run(ctx); err != nil {
		return err
	}
	log.InfoContext(ctx, "broker stopped")
	return nil
}

// zeroAsNone maps a flag's 0 (none) to the config's negative (its 0 means
// the default).
func zeroAsNone(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// failedTimeout maps the flag's 0 (disabled) to the config's negative.
func failedTimeout(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

type benchCmd struct {
	Lifecycles benchLifecyclesCmd `cmd:"" default:"withargs" help:"Task lifecycles per second through the REST API with a no-op runtime (the default)."`
	Replay     benchReplayCmd     `cmd:"" help:"Replay speed of the fold and start-up time on a long log, without and with a snapshot."`
}

type benchLifecyclesCmd struct {
	Tasks   int `name:"tasks" default:"10000" help:"Number of tasks to submit."`
	Clients int `name:"clients" default:"8" help:"Concurrent HTTP clients submitting them."`
	Slots   int `name:"slots" default:"64" help:"Slots of the benchmark's no-op node."`
	// CPUProfile is for finding where a lifecycle's time goes.
	CPUProfile string `name:"cpuprofile" type:"path" help:"Write a CPU profile of the run (go tool pprof) to this file."`
}

// quiet keeps the broker under test to its warnings and errors, unless
// debug logs were asked for.
func quiet(ctx context.Context, log *slog.Logger) *slog.Logger {
	if !log.Enabled(ctx, slog.LevelDebug) {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return log
}

func (b *benchLifecyclesCmd) Run(ctx context.Context, log *slog.Logger) error {
	if b.CPUProfile != "" {
		f, err := os.Create(b.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	res, err := bench.Run(ctx, bench.Config{Tasks: b.Tasks, Clients: b.Clients, Slots: b.Slots, Logger: quiet(ctx, log)})
	if err != nil {
		return err
	}
	res.Print(os.Stdout)
	return nil
}

type benchReplayCmd struct {
	Events  int           `name:"events" default:"1000000" help:"Length of the log to build."`
	Runs    int           `name:"runs" default:"3" help:"How often each start-up is measured."`
	DataDir string        `name:"data-dir" help:"Directory of the store (default: a temporary one, removed at the end)."`
	Settle  time.Duration `name:"settle" default:"2m" help:"Wait after writing the log before the start-ups: a NATS server reloads the message ids of the last 2m (the duplicate window) when it starts. 0 for no wait."`
}

func (b *benchReplayCmd) Run(ctx context.Context, log *slog.Logger) error {
	settle := b.Settle
	if settle == 0 {
		settle = -1 // no wait
	} else {
		fmt.Fprintf(os.Stderr, "the start-ups wait %s after the log is written (--settle)\n", settle)
	}
	res, err := bench.Replay(ctx, bench.ReplayConfig{Events: b.Events, Runs: b.Runs, DataDir: b.DataDir, Settle: settle, Logger: quiet(ctx, log)})
	if err != nil {
		return err
	}
	res.Print(os.Stdout)
	return nil
}

func main() {
	var c cli
	kctx := kong.Parse(&c, kong.Name("broker"),
		kong.Description("An event-sourced container broker on NATS JetStream, compatible with container-broker's REST API."),
		kong.UsageOnError())
	log := newLogger(c.LogLevel, c.LogFormat)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kctx.BindTo(ctx, (*context.Context)(nil))
	kctx.Bind(log)
	if err := kctx.Run(); err != nil {
		log.Error("broker stopped", slog.Any("error", err))
		stop()
		os.Exit(1) //nolint:gocritic // stop() ran above
	}
}

func newLogger(level, format string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
