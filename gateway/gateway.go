package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// LogSource reads a task's logs.
type LogSource interface {
	TaskLogs(ctx context.Context, taskID string) ([]byte, error)
}

// Config configures a Gateway.
type Config struct {
	// Replica is the process's fold. Required.
	Replica *projections.Replica
	// JetStream is where events are appended. Required.
	JetStream jetstream.JetStream
	// Logs reads task logs. Required.
	Logs LogSource
	// CheckHostname validates a node's Docker address. Required.
	CheckHostname func(hostname string) error
	// Mounts are the storage mount names tasks may use (name → host path).
	Mounts map[string]string
	// MaxRetries is the retry count of tasks that do not give one. Defaults
	// to 3, as the seed's task_retry_count.
	MaxRetries int
	// RetryBackoffMin and RetryBackoffMax bound the pause before a retry
	// (doubling, with jitter); zero retries at once, as the seed.
	RetryBackoffMin, RetryBackoffMax time.Duration
	// MaxNodeLosses caps how often a task's attempt may be lost with its
	// node (those do not use up retries). Defaults to 5; negative means 0.
	MaxNodeLosses int
	// TaskTimeout bounds an attempt of tasks that do not give a timeout;
	// zero means no limit.
	TaskTimeout time.Duration
	// Webhooks is set when a webhook secret is configured: only then may a
	// task give a callback_url (deliveries are always signed).
	Webhooks bool
	// Actor names the gateway in its events. Defaults to "gateway".
	Actor string
	// ApplyTimeout bounds the wait for the fold to apply a write. Defaults
	// to 10s.
	ApplyTimeout time.Duration
	// AppendTimeout bounds the attempts to append a request's events while
	// appends fail transiently (events.Transient), as they do for a second
	// or two while a clustered stream elects a new leader. Defaults to 10s.
	AppendTimeout time.Duration
	// BodyLimit caps request bodies. Defaults to "512K", so that the event a
	// body becomes always fits in a NATS message (1 MiB by default).
	BodyLimit string
	// Snapshots, when set, shorten the replays of ?at= queries.
	Snapshots *projections.Snapshots
	// Events fans the event stream out to GET /events clients; without it
	// GET /events answers 503. Its Run is the caller's to run.
	Events *Hub
	// EventsHeartbeat is how often a GET /events response gets a comment
	// line, so that proxies keep it open. Defaults to 15s.
	EventsHeartbeat time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// Gateway is the REST API.
type Gateway struct {
	cfg  Config
	log  *slog.Logger
	echo *echo.Echo
	// past is held by the one historical fold (?at=) running at a time.
	past sync.Mutex
	// closing is closed when the server shuts down; it ends the responses
	// that never end on their own (GET /events).
	closing   chan struct{}
	closeOnce sync.Once
	// idem is the idempotency bucket, looked up once (see idempotencyBucket).
	idemMu sync.Mutex
	idem   jetstream.KeyValue
	// releases are the idempotency records being withdrawn after 5xx
	// answers (see release); Serve waits for them.
	releases sync.WaitGroup
}

// New returns a gateway with its routes.
func New(cfg Config) (*Gateway, error) {
	if cfg.Replica == nil || cfg.JetStream == nil || cfg.Logs == nil || cfg.CheckHostname == nil {
		return nil, errors.New("invalid gateway config: Replica, JetStream, Logs and CheckHostname are required")
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 3
	}
	if cfg.MaxNodeLosses == 0 {
		cfg.MaxNodeLosses = 5
	}
	if cfg.Actor == "" {
		cfg.Actor = "gateway"
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	if cfg.AppendTimeout <= 0 {
		cfg.AppendTimeout = 10 * time.Second
	}
	if cfg.BodyLimit == "" {
		cfg.BodyLimit = "512K"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EventsHeartbeat <= 0 {
		cfg.EventsHeartbeat = 15 * time.Second
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger.With(slog.String("component", "gateway")), closing: make(chan struct{})}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = g.handleError
	e.Use(middleware.Recover(), middleware.BodyLimit(cfg.BodyLimit), middleware.RequestID(), g.idempotency)
	g.routes(e)
	g.echo = e
	return g, nil
}

func (g *Gateway) routes(e *echo.Echo) {
	e.GET("/tasks", g.listTasksPage)
	e.POST("/tasks", g.createTask)
	e.GET("/tasks/healthcheck", g.tasksHealthcheck)
	e.DELETE("/tasks/errors", g.deleteErrors)
	e.GET("/tasks/:uuid", g.showTask)
	e.GET("/tasks/:uuid/logs", g.taskLogs)
	e.GET("/tasks/:uuid/events", g.taskEvents)
	e.PUT("/tasks/:uuid/mark_as_error", g.markAsError)
	e.POST("/tasks/:uuid/kill_container", g.killContainer)
	e.POST("/tasks/:uuid/cancel", g.cancelTask)

	e.GET("/nodes", g.listNodes)
	e.POST("/nodes", g.createNode)
	e.GET("/nodes/healthcheck", g.nodesHealthcheck)
	e.GET("/nodes/:uuid", g.showNode)
	e.PATCH("/nodes/:uuid", g.updateNode)
	e.PUT("/nodes/:uuid", g.updateNode)
	e.DELETE("/nodes/:uuid", g.deleteNode)
	e.POST("/nodes/:uuid/accept_new_tasks", g.acceptNewTasks)
	e.POST("/nodes/:uuid/reject_new_tasks", g.rejectNewTasks)
	e.POST("/nodes/:uuid/kill_containers", g.killContainers)

	e.GET("/status", g.statusPool)
	e.GET("/status/nodes", g.statusNodes)
	e.GET("/status/tasks", g.statusTasks)
	e.GET("/status/tags", g.statusTags)
	e.GET("/status/tag_values", g.statusTagValues)
	e.GET("/status/task_statuses", g.statusTaskStatuses)
	e.POST("/status/retry_task/:uuid", g.retryTask)
	e.GET("/healthcheck", g.healthcheck)

	e.GET("/events", g.streamEvents)
}

// Handler returns the gateway as an http.Handler.
func (g *Gateway) Handler() http.Handler { return g.echo }

// Serve answers requests on ln until ctx is done, then shuts down gracefully.
// It starts answering once the fold has caught up with the log, so that no
// answer reflects a state older than what was written before a restart;
// clients that connect earlier wait in the listener's backlog.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	select {
	case <-g.cfg.Replica.Ready():
	case <-ctx.Done():
		return nil
	}
	srv := &http.Server{Handler: g.echo, ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(func() { g.closeOnce.Do(func() { close(g.closing) }) })
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	g.log.InfoContext(ctx, "http api listening", slog.String("addr", ln.Addr().String()))
	select {
	case err := <-errc:
		return fmt.Errorf("http api: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down http api: %w", err)
	}
	// Every handler has returned, so no release starts any more; those
	// under way stop at g.closing.
	g.releases.Wait()
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http api: %w", err)
	}
	return nil
}

// errorBody is the JSON body of every error but validation errors.
type errorBody struct {
	Error string `json:"error"`
}

// validationError is a 422 whose body, as the seed's, maps each field to
// what is wrong with it.
type validationError map[string][]string

func (v validationError) Error() string {
	return fmt.Sprintf("invalid fields: %v", map[string][]string(v))
}

func (v validationError) add(field, msg string) {
	if !slices.Contains(v[field], msg) {
		v[field] = append(v[field], msg)
	}
}

// httpError is an error with a status.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

// handleError turns every error into a JSON answer.
func (g *Gateway) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var (
		status = http.StatusInternalServerError
		body   any
		verr   validationError
		herr   *httpError
		eerr   *echo.HTTPError
	)
	switch {
	case errors.As(err, &verr):
		status, body = http.StatusUnprocessableEntity, verr
	case errors.As(err, &herr):
		status, body = herr.status, errorBody{Error: herr.msg}
	case errors.As(err, &eerr):
		status, body = eerr.Code, errorBody{Error: fmt.Sprint(eerr.Message)}
	default:
		g.log.ErrorContext(c.Request().Context(), "request failed", slog.String("path", c.Path()), slog.Any("error", err))
		body = errorBody{Error: "internal error: " + err.Error()}
	}
	if c.Request().Method == http.MethodHead {
		err = c.NoContent(status)
	} else {
		err = c.JSON(status, body)
	}
	if err != nil {
		g.log.WarnContext(c.Request().Context(), "writing error response", slog.Any("error", err))
	}
}

// readBody reads a request body; a body over the limit was refused by the
// middleware already.
func readBody(c echo.Context) ([]byte, error) {
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "reading the request body: %v", err)
	}
	return body, nil
}

// appendAttempt bounds one attempt of an append: an append the dead leader
// of a stream had taken is never answered.
const appendAttempt = time.Second

// append stores events, retrying transient failures with the same
// envelopes (their keys make that safe) for up to AppendTimeout. It answers
// 503 when the log stays unavailable.
func (g *Gateway) append(ctx context.Context, envs ...events.Envelope) ([]events.Ack, error) {
	deadline := time.Now().Add(g.cfg.AppendTimeout)
	delay := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, min(appendAttempt, time.Until(deadline)))
		var acks []events.Ack
		var err error
		if len(envs) == 1 {
			var ack events.Ack
			ack, err = events.Append(actx, g.cfg.JetStream, envs[0])
			acks = []events.Ack{ack}
		} else {
			acks, err = events.AppendAll(actx, g.cfg.JetStream, envs)
		}
		cancel()
		if err == nil {
			return acks, nil
		}
		if !events.Transient(err) || ctx.Err() != nil || time.Until(deadline) < delay {
			return nil, errorf(http.StatusServiceUnavailable, "the event log is not available: %v", err)
		}
		g.log.WarnContext(ctx, "appending events failed; retrying", slog.Int("events", len(envs)), slog.Any("error", err))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
		delay = min(2*delay, time.Second)
	}
}

// propose appends one event for a request, waits until the fold has applied
// it and returns the fold's outcome together with a state holding only that
// event: the entity as the request left it, which is what a create answers
// with (later events may already have moved it on).
func (g *Gateway) propose(c echo.Context, key string, p events.Payload) (projections.Outcome, *projections.State, error) {
	env, err := events.New(key, p, events.Meta{CorrelationID: requestID(c), Actor: g.cfg.Actor})
	if err != nil {
		return projections.Outcome{}, nil, err
	}
	ctx := c.Request().Context()
	acks, err := g.append(ctx, env)
	if err != nil {
		return projections.Outcome{}, nil, err
	}
	ack := acks[0]
	wctx, cancel := context.WithTimeout(ctx, g.cfg.ApplyTimeout)
	defer cancel()
	out, err := g.cfg.Replica.WaitSeq(wctx, ack.Seq)
	if err != nil && wctx.Err() != nil {
		return projections.Outcome{}, nil, errorf(http.StatusServiceUnavailable, "%s for %s was stored but not applied in time: %v", env.Type, env.AggregateID, err)
	}
	if err != nil { // a duplicate key whose first outcome is forgotten
		return projections.Outcome{}, nil, errorf(http.StatusConflict, "%s for %s was already stored; its outcome is no longer known: %v", env.Type, env.AggregateID, err)
	}
	own := projections.NewState()
	own.Apply(env)
	return out, own, nil
}
