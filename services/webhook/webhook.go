// Package webhook delivers the terminal outcomes of tasks to their callback
// URLs: it POSTs the outcome event, exactly as stored in the log, signed with
// HMAC-SHA256, retries failed attempts with exponential backoff and jitter,
// and records every attempt and the final result as events. The delivery
// state is in the fold, so a restarted broker resumes pending deliveries at
// their recorded next-attempt times and never repeats one recorded as
// delivered.
package webhook

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
)

// Request headers of every delivery.
const (
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256, keyed with the
	// webhook secret, of the timestamp, a '.', and the body.
	HeaderSignature = "X-CB-Signature"
	// HeaderTimestamp is when the attempt was sent, in Unix seconds.
	HeaderTimestamp = "X-CB-Timestamp"
	// HeaderEventID is the outcome event's id: the same for every attempt of
	// a delivery, so receivers deduplicate on it.
	HeaderEventID = "X-CB-Event-Id"
	// HeaderEventType is the outcome event's type, e.g. task.completed.v1.
	HeaderEventType = "X-CB-Event-Type"
	// HeaderDeliveryID identifies one attempt: "<event id>-<attempt>".
	HeaderDeliveryID = "X-CB-Delivery-Id"
	// HeaderAttempt is the attempt's number, from 1.
	HeaderAttempt = "X-CB-Attempt"
)

// Sign returns the value of HeaderSignature for a body sent at timestamp
// (Unix seconds, as in HeaderTimestamp).
func Sign(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Config configures a Service.
type Config struct {
	// Replica is the process's fold. Required.
	Replica *projections.Replica
	// Writer appends the delivery events. Required.
	Writer *actor.Writer
	// JetStream reads the outcome events' bytes from the stream. Required.
	JetStream jetstream.JetStream
	// Secret keys the signatures. Required: deliveries are never unsigned.
	Secret []byte
	// MaxAttempts is how many attempts a delivery gets before it is
	// abandoned. Defaults to 10.
	MaxAttempts int
	// BackoffMin and BackoffMax bound the pause after a failed attempt: it
	// doubles from BackoffMin with every attempt up to BackoffMax, half of
	// it random. Default to 1s and 5m.
	BackoffMin, BackoffMax time.Duration
	// Timeout bounds one attempt, from connecting to the answer's status.
	// Defaults to 10s.
	Timeout time.Duration
	// Concurrency caps the attempts in flight. Defaults to 16.
	Concurrency int
	// Client sends the requests. Defaults to a client that follows no
	// redirects (a 3xx answer is a failed attempt).
	Client *http.Client
	// Jitter returns a number in [0, 1) that spreads the pauses. Defaults to
	// math/rand.
	Jitter func() float64
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	c.MaxAttempts = cmp.Or(c.MaxAttempts, 10)
	c.BackoffMin = cmp.Or(c.BackoffMin, time.Second)
	c.BackoffMax = max(cmp.Or(c.BackoffMax, 5*time.Minute), c.BackoffMin)
	c.Timeout = cmp.Or(c.Timeout, 10*time.Second)
	c.Concurrency = cmp.Or(c.Concurrency, 16)
	if c.Client == nil {
		c.Client = &http.Client{
			Transport:     http.DefaultTransport.(*http.Transport).Clone(),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if c.Jitter == nil {
		c.Jitter = rand.Float64
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Replica == nil || c.Writer == nil || c.JetStream == nil {
		errs = append(errs, errors.New("the replica, the writer and JetStream are required"))
	}
	if len(c.Secret) == 0 {
		errs = append(errs, errors.New("a secret is required: deliveries are always signed"))
	}
	if c.MaxAttempts < 1 || c.BackoffMin < 0 || c.Timeout < 0 || c.Concurrency < 1 {
		errs = append(errs, errors.New("the attempts and the concurrency must be positive, the backoff and the timeout not negative"))
	}
	return errors.Join(errs...)
}

// Service delivers outcomes. It keeps its own set of pending deliveries,
// filled by one scan of the tasks at start and then kept up to date from the
// events the replica folds (as the projector does), so that no round scans
// every task.
type Service struct {
	cfg Config
	log *slog.Logger
}

// New returns a service.
func New(cfg Config) (*Service, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("invalid webhook config: %w", err)
	}
	return &Service{cfg: cfg, log: cfg.Logger.With(slog.String("component", "webhook"))}, nil
}

// delivery is what the service knows of one task's pending delivery: a copy,
// so that it is used outside the replica's lock.
type delivery struct {
	taskID, url   string
	outcome       projections.OutcomeRef
	attempts      int
	lastSucceeded bool
	lastStatus    int
	lastError     string
	// due is when the next attempt may be made (zero: at once); record is
	// set when the last attempt's result is still to be recorded.
	due    time.Time
	record bool
	// correlation and causation of the events written for the delivery.
	correlationID, causationID string
}

// pendingOf returns the task's delivery if something is to be done for it.
func pendingOf(t *projections.Task) (delivery, bool) {
	due, record, ok := t.Webhook.Due()
	if !ok {
		return delivery{}, false
	}
	w := t.Webhook
	return delivery{
		taskID: t.ID, url: t.CallbackURL, outcome: w.Outcome, attempts: w.Attempts,
		lastSucceeded: w.LastSucceeded, lastStatus: w.LastStatusCode, lastError: w.LastError,
		due: due, record: record, correlationID: t.CorrelationID, causationID: w.Outcome.ID,
	}, true
}

// report is a worker's report: the task it worked on and, when its events were
// not taken in, how long to leave the task alone.
type report struct {
	taskID string
	hold   time.Duration
}

// Run delivers until ctx is done. Attempts in flight are cancelled when ctx
// ends; an attempt that got its answer is still recorded.
func (s *Service) Run(ctx context.Context) error {
	defer s.cfg.Client.CloseIdleConnections()
	select {
	case <-s.cfg.Replica.Ready():
	case <-ctx.Done():
		return nil
	}
	var stream jetstream.Stream
	err := events.Retry(ctx, s.log, "opening the event stream", time.Second, func(ctx context.Context) error {
		var err error
		stream, err = s.cfg.JetStream.Stream(ctx, events.StreamName)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("opening stream %s: %w", events.StreamName, err)
	}
	r := &round{
		Service: s, stream: stream, pending: map[string]delivery{}, inflight: map[string]bool{},
		hold: map[string]time.Time{}, done: make(chan report, s.cfg.Concurrency),
	}
	defer r.wg.Wait()
	r.last = r.scan()
	s.log.InfoContext(ctx, "webhook deliveries started", slog.Int("pending", len(r.pending)))
	return r.loop(ctx)
}

// backoff is the pause after failed attempt n (from 1): BackoffMin doubled
// n-1 times, at most BackoffMax, with "equal jitter" (half of it fixed, half
// random) so that deliveries failing together do not retry together.
func (s *Service) backoff(n int) time.Duration {
	d := s.cfg.BackoffMin
	for i := 1; i < n && d < s.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.BackoffMax)
	return d/2 + time.Duration(s.cfg.Jitter()*float64(d/2))
}

// sortedDue returns the deliveries in the order they are due, then by task.
func sortedDue(m map[string]delivery) []delivery {
	out := make([]delivery, 0, len(m))
	for _, d := range m {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b delivery) int {
		return cmp.Or(a.due.Compare(b.due), cmp.Compare(a.taskID, b.taskID))
	})
	return out
}

// post sends one attempt and returns the answer's status.
func (s *Service) post(ctx context.Context, d delivery, body []byte, attempt int, at time.Time) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	ts := strconv.FormatInt(at.Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "cbroker-webhook/1")
	req.Header.Set(HeaderEventID, d.outcome.ID)
	req.Header.Set(HeaderEventType, string(d.outcome.Type))
	req.Header.Set(HeaderDeliveryID, deliveryID(d.outcome.ID, attempt))
	req.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(s.cfg.Secret, ts, body))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	// Read a little of the answer so that the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}

func deliveryID(eventID string, attempt int) string { return eventID + "-" + strconv.Itoa(attempt) }

// key is the idempotency key of a delivery event:
// task:<id>:webhook:<outcome seq>[:<attempt>]:<event name>.
func key(d delivery, attempt int, t events.Type) string {
	if attempt > 0 {
		return fmt.Sprintf("task:%s:webhook:%d:%d:%s", d.taskID, d.outcome.Seq, attempt, t.Name())
	}
	return fmt.Sprintf("task:%s:webhook:%d:%s", d.taskID, d.outcome.Seq, t.Name())
}

// describe says what an attempt's result was, for logs and abandonment.
func describe(status int, errMsg string) string {
	if errMsg != "" {
		return errMsg
	}
	return "HTTP " + strconv.Itoa(status)
}
