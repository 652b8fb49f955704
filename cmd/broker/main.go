// Command broker runs the container broker: `broker serve` starts it with
// an embedded NATS server (or against an external one), `broker bench`
// measures its control plane.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/cmd/internal/audit"
	"github.com/cbroker/broker/cmd/internal/bench"
)

type cli struct {
	LogLevel  string `name:"log-level" default:"info" enum:"debug,info,warn,error" env:"BROKER_LOG_LEVEL" help:"Log level: debug, info, warn, error."`
	LogFormat string `name:"log-format" default:"text" enum:"text,json" env:"BROKER_LOG_FORMAT" help:"Log format: text or json."`

	Serve serveCmd `cmd:"" help:"Run the broker: the HTTP API, the scheduler, the runners, the health monitor and the projector."`
	Bench benchCmd `cmd:"" help:"Measure the control plane: task lifecycles per second with a no-op runtime (benchmark only)."`
	Audit auditCmd `cmd:"" help:"Print a history from the log for people."`
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
	NATSURL         string            `name:"nats-url" env:"BROKER_NATS_URL" help:"Use this external NATS server (comma-separated URLs) instead of the embedded one."`
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
		Listen: s.Listen, DataDir: s.DataDir, NATSURL: s.NATSURL, NATSConfig: s.NATSConfig, NATSListen: s.NATSListen,
		LocalNode: s.LocalNode, LocalNodeSlots: slots, Mounts: s.StorageMount,
		HealthInterval: s.HealthInterval, HealthGrace: s.HealthGrace, StopGrace: s.StopGrace, DockerCertPath: s.DockerCertPath,
		FailedTimeout: failedTimeout(s.FailedTimeout), Logger: log,
		MaxRetries: zeroAsNone(s.MaxRetries), RetryBackoffMin: s.RetryBackoffMin, RetryBackoffMax: s.RetryBackoffMax,
		MaxNodeLosses: zeroAsNone(s.MaxNodeLosses), TaskTimeout: s.TaskTimeout,
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
	Tasks   int `name:"tasks" default:"10000" help:"Number of tasks to submit."`
	Clients int `name:"clients" default:"8" help:"Concurrent HTTP clients submitting them."`
	Slots   int `name:"slots" default:"64" help:"Slots of the benchmark's no-op node."`
}

func (b *benchCmd) Run(ctx context.Context, log *slog.Logger) error {
	// The broker under test logs only its warnings and errors, unless debug
	// logs were asked for.
	if !log.Enabled(ctx, slog.LevelDebug) {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	res, err := bench.Run(ctx, bench.Config{Tasks: b.Tasks, Clients: b.Clients, Slots: b.Slots, Logger: log})
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
