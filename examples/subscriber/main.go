// Command subscriber is an example event subscriber for the container
// broker. It follows the outcome of every task (the events completed,
// failed and cancelled) with a durable JetStream consumer and appends each
// to a file, one JSON line per outcome, exactly once and in log order, even
// when it is killed and started again. With --task it waits for one task to
// end instead and exits with a status that tells how it ended.
//
// It imports only the broker's events module and nats.go: the public event
// contract is all a subscriber needs. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// Exit statuses.
const (
	exitCompleted = 0 // following: stopped by a signal; --task: the task completed
	exitError     = 1 // cannot connect, cannot write, --timeout passed
	exitUsage     = 2
	exitFailed    = 3 // --task: the task failed
	exitCancelled = 4 // --task: the task was cancelled
)

type config struct {
	url, user, password, passwordFile, creds string

	durable string
	out     string
	ackWait time.Duration

	task    string
	timeout time.Duration

	verbose bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("subscriber", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.url, "url", env("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated (env NATS_URL)")
	fs.StringVar(&c.user, "user", env("NATS_USER", "subscriber"), "NATS user (env NATS_USER)")
	fs.StringVar(&c.password, "password", os.Getenv("NATS_PASSWORD"), "NATS password (env NATS_PASSWORD; prefer the environment or --password-file)")
	fs.StringVar(&c.passwordFile, "password-file", os.Getenv("NATS_PASSWORD_FILE"),
		"file holding the NATS password, e.g. broker-data/subscriber.password (env NATS_PASSWORD_FILE)")
	fs.StringVar(&c.creds, "creds", os.Getenv("NATS_CREDS"), "NATS credentials file (JWT and nkey) instead of user and password (env NATS_CREDS)")
	fs.StringVar(&c.durable, "durable", "example-subscriber", "name of the durable consumer")
	fs.StringVar(&c.out, "out", "outcomes.jsonl", "output file: one JSON line per task outcome")
	fs.DurationVar(&c.ackWait, "ack-wait", 30*time.Second, "how long the server waits for an ack before it delivers an event again")
	fs.StringVar(&c.task, "task", "", "wait for this task to end, print its outcome and exit: 0 completed, 3 failed, 4 cancelled")
	fs.DurationVar(&c.timeout, "timeout", 0, "with --task: give up after this long (exit 1); 0 waits for ever")
	fs.BoolVar(&c.verbose, "v", false, "log every event")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.password != "" && c.passwordFile != "" {
		return c, errors.New("give --password or --password-file, not both")
	}
	return c, nil
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, hooks{}))
}

// run is the whole program; it returns the exit status.
func run(args []string, stdout, stderr io.Writer, h hooks) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitCompleted
		}
		_, _ = fmt.Fprintln(stderr, "subscriber:", err)
		return exitUsage
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	nc, err := connect(cfg, log)
	if err != nil {
		log.ErrorContext(ctx, "cannot connect", slog.Any("error", err))
		return exitError
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.ErrorContext(ctx, "jetstream", slog.Any("error", err))
		return exitError
	}
	if cfg.task != "" {
		return waitAndPrint(ctx, js, cfg, stdout, log)
	}
	out, err := openJournal(cfg.out)
	if err != nil {
		log.ErrorContext(ctx, "cannot open the output file", slog.Any("error", err))
		return exitError
	}
	defer out.Close()
	f := &follower{js: js, durable: cfg.durable, ackWait: cfg.ackWait, out: out, log: log, hooks: h}
	if err := f.run(ctx); err != nil {
		log.ErrorContext(ctx, "stopped", slog.Any("error", err))
		return exitError
	}
	log.InfoContext(ctx, "stopped", slog.Uint64("last_handled_seq", out.last))
	return exitCompleted
}

func connect(cfg config, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("example subscriber"),
		nats.MaxReconnects(-1),
		// Permission errors arrive asynchronously; without this they are
		// only timeouts.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("nats error", slog.Any("error", err))
		}),
	}
	password := cfg.password
	if cfg.passwordFile != "" {
		b, err := os.ReadFile(cfg.passwordFile)
		if err != nil {
			return nil, fmt.Errorf("reading the password: %w", err)
		}
		password = strings.TrimSpace(string(b))
	}
	switch {
	case cfg.creds != "":
		opts = append(opts, nats.UserCredentials(cfg.creds))
	case password != "":
		opts = append(opts, nats.UserInfo(cfg.user, password))
	}
	return nats.Connect(cfg.url, opts...)
}

func waitAndPrint(ctx context.Context, js jetstream.JetStream, cfg config, stdout io.Writer, log *slog.Logger) int {
	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	o, err := waitTask(ctx, js, cfg.task, log)
	if err != nil {
		log.ErrorContext(ctx, "no outcome", slog.Any("error", err))
		return exitError
	}
	b, err := json.Marshal(o)
	if err != nil {
		return exitError
	}
	_, _ = fmt.Fprintln(stdout, string(b))
	switch o.Type {
	case events.TypeTaskCompleted:
		return exitCompleted
	case events.TypeTaskFailed:
		return exitFailed
	default:
		return exitCancelled
	}
}
