package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// HeaderIdempotencyKey is the seed's idempotency header.
const HeaderIdempotencyKey = "X-Idempotency-Key"

// pendingTimeout is how long a request with an idempotency key may be in
// progress before a retry of it takes over (its broker may have died).
const pendingTimeout = time.Minute

const ctxIdempotencyKey = "cb.idempotency_key"

// idempotencyKey returns the hashed X-Idempotency-Key of the request, or "".
func idempotencyKey(c echo.Context) string {
	k, _ := c.Get(ctxIdempotencyKey).(string)
	return k
}

// newID returns the id of a task or node a request creates: derived from
// its idempotency key, so that the key never creates a second one, even
// after its stored answer is gone; random otherwise.
func newID(c echo.Context, kind string) string {
	if k := idempotencyKey(c); k != "" {
		return uuid.NewSHA1(uuid.NameSpaceOID, []byte("cbroker-"+kind+":"+k)).String()
	}
	return uuid.NewString()
}

// answer is what the idempotency bucket keeps of a request.
type answer struct {
	State     string    `json:"state"` // pending | done
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	StartedAt time.Time `json:"started_at"`
	// Claim identifies the request that stored a pending answer, so that it
	// recognises its own claim when it retries a Create whose reply was lost.
	Claim       string `json:"claim,omitempty"`
	Status      int    `json:"status,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Body        []byte `json:"body,omitempty"`
}

// idempotency replays the first answer to a request with the same
// X-Idempotency-Key for a day (any non-GET route), answers 409 while the
// first is still in progress, and 422 when the key was used for another
// route. Answers of 5xx are not kept, so the request can be retried.
// Unlike the seed, 4xx answers are kept and replayed too, instead of
// locking the key until it expires.
func (g *Gateway) idempotency(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		raw := c.Request().Header.Get(HeaderIdempotencyKey)
		if raw == "" || c.Request().Method == http.MethodGet || c.Request().Method == http.MethodHead {
			return next(c)
		}
		sum := sha256.Sum256([]byte(raw))
		key := hex.EncodeToString(sum[:])
		ctx := c.Request().Context()
		kv, err := g.idempotencyBucket(ctx)
		if err != nil {
			return errorf(http.StatusServiceUnavailable, "idempotency store: %v", err)
		}
		mine := answer{
			State: "pending", Method: c.Request().Method, Path: c.Request().URL.Path,
			StartedAt: g.cfg.Now().UTC(), Claim: uuid.NewString(),
		}
		if err := g.claim(c, kv, key, mine); err != nil {
			var replayed replayedError
			if errors.As(err, &replayed) {
				return replayed.err
			}
			var herr *httpError
			if errors.As(err, &herr) && herr.status >= 500 {
				// A Create whose reply was lost may be stored even so, and
				// would answer this key's retries with 409.
				g.release(ctx, kv, key, mine.Claim, true)
			}
			return err
		}
		c.Set(ctxIdempotencyKey, key)
		rec := &recorder{ResponseWriter: c.Response().Writer, status: http.StatusOK}
		c.Response().Writer = rec
		herr := next(c)
		if herr != nil {
			g.echo.HTTPErrorHandler(herr, c)
		}
		// Finish with a context of its own: the answer is sent already.
		// Retry for a while: a key left pending answers its retries with 409
		// until pendingTimeout.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if rec.status >= 500 {
			g.release(ctx, kv, key, mine.Claim, false)
			return nil
		}
		done := mine
		done.State, done.Status, done.ContentType, done.Body = "done", rec.status, rec.Header().Get(echo.HeaderContentType), rec.body.Bytes()
		b, _ := json.Marshal(done)
		if err := retryKV(fctx, func(ctx context.Context) error { _, err := kv.Put(ctx, key, b); return err }); err != nil {
			g.log.WarnContext(fctx, "storing an idempotent answer", slog.Any("error", err))
		}
		return nil
	}
}

// releaseSettle is how long a release after a failed claim keeps looking
// for the claim's record before it concludes that the Create was lost.
const releaseSettle = 5 * time.Second

// release withdraws a request's pending record after a 5xx answer, so that
// a retry with the same key runs at once instead of meeting 409 until
// pendingTimeout. Only the request's own record is deleted, by revision.
// The first try is made before the answer goes out, so that an immediate
// retry finds the key free. If the store does not answer (it is often as
// unavailable as what made the request fail: a stream electing its leader),
// it goes on in the background for as long as the key would stay blocked.
// After a failed claim (uncertain) the record may appear late, when a
// Create whose reply was lost is stored after all: it keeps looking for
// releaseSettle.
func (g *Gateway) release(ctx context.Context, kv jetstream.KeyValue, key, claim string, uncertain bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pendingTimeout)
	var absent time.Time
	step := func() (bool, error) {
		actx, acancel := context.WithTimeout(ctx, appendAttempt)
		defer acancel()
		e, err := kv.Get(actx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if absent.IsZero() {
				absent = time.Now()
			}
			return !uncertain || time.Since(absent) >= releaseSettle, nil
		case err != nil:
			return false, err
		}
		var prev answer
		if json.Unmarshal(e.Value(), &prev) != nil || prev.State != "pending" || prev.Claim != claim {
			return true, nil // not this request's record
		}
		err = kv.Delete(actx, key, jetstream.LastRevision(e.Revision()))
		// Released, or taken over meanwhile.
		return err == nil || errors.Is(err, jetstream.ErrKeyRevisionMismatch), err
	}
	if done, _ := step(); done {
		cancel()
		return
	}
	g.releases.Go(func() {
		defer cancel()
		for {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-g.closing:
				return
			case <-ctx.Done():
				g.log.WarnContext(ctx, "releasing an idempotency key: it stays blocked until a retry takes it over", slog.String("key", key))
				return
			}
			if done, err := step(); done {
				return
			} else if err != nil {
				g.log.DebugContext(ctx, "releasing an idempotency key; retrying", slog.Any("error", err))
			}
		}
	})
}

// idempotencyBucket returns the idempotency bucket. The handle is looked up
// once: the lookup asks the bucket's stream leader for its configuration,
// which a request would otherwise wait for whenever that leader changes.
func (g *Gateway) idempotencyBucket(ctx context.Context) (jetstream.KeyValue, error) {
	g.idemMu.Lock()
	defer g.idemMu.Unlock()
	if g.idem == nil {
		// Retried like an append: the bucket's stream may be electing.
		ctx, cancel := context.WithTimeout(ctx, g.cfg.AppendTimeout)
		defer cancel()
		err := events.Retry(ctx, g.log, "opening the idempotency bucket", 200*time.Millisecond, func(ctx context.Context) error {
			actx, acancel := context.WithTimeout(ctx, appendAttempt)
			defer acancel()
			kv, err := g.cfg.JetStream.KeyValue(actx, events.BucketIdempotency)
			g.idem = kv
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return g.idem, nil
}

// retryKV runs a KV write until it succeeds or ctx is done, each attempt
// bounded by appendAttempt: while a bucket's stream elects a new leader,
// writes fail or go unanswered for a second or two.
func retryKV(ctx context.Context, write func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, appendAttempt)
		err := write(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
}

// claim records that the request is in progress, or answers for it: the
// stored answer, or 409 while another request with the key runs.
func (g *Gateway) claim(c echo.Context, kv jetstream.KeyValue, key string, mine answer) error {
	ctx := c.Request().Context()
	b, _ := json.Marshal(mine)
	deadline := time.Now().Add(g.cfg.AppendTimeout)
	for tries := 0; tries < 3; {
		actx, cancel := context.WithTimeout(ctx, appendAttempt)
		_, err := kv.Create(actx, key, b)
		cancel()
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			// The bucket's stream may be electing a leader; the Create may
			// have been stored even so, which the next try recognises.
			if err := pauseIfTransient(ctx, err, deadline); err != nil {
				return err
			}
			continue
		}
		gctx, gcancel := context.WithTimeout(ctx, appendAttempt)
		e, err := kv.Get(gctx, key)
		gcancel()
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			tries++
			continue // gone in between: try again
		}
		if err != nil {
			// The store may have taken the Create and lost its leader
			// before this read: keep reading while the request may wait.
			if err := pauseIfTransient(ctx, err, deadline); err != nil {
				return err
			}
			continue
		}
		tries++
		var prev answer
		if err := json.Unmarshal(e.Value(), &prev); err != nil {
			return errorf(http.StatusInternalServerError, "idempotency store holds a malformed answer: %v", err)
		}
		switch {
		case prev.State == "pending" && prev.Claim == mine.Claim:
			return nil // our own Create, whose reply was lost
		case prev.Method != mine.Method || prev.Path != mine.Path:
			return errorf(http.StatusUnprocessableEntity, "%s was already used for %s %s", HeaderIdempotencyKey, prev.Method, prev.Path)
		case prev.State == "done":
			c.Response().Header().Set("Idempotent-Replayed", "true")
			return replayedError{c.Blob(prev.Status, prev.ContentType, prev.Body)}
		case mine.StartedAt.Sub(prev.StartedAt) < pendingTimeout:
			return errorf(http.StatusConflict, "a request with this %s is in progress; retry later", HeaderIdempotencyKey)
		}
		// The first request has been in progress for too long: its broker
		// died. Take over; the events it may have appended carry keys derived
		// from the same idempotency key, so nothing is appended twice.
		if _, err := kv.Update(ctx, key, b, e.Revision()); err == nil {
			return nil
		}
	}
	return errorf(http.StatusConflict, "a request with this %s is in progress; retry later", HeaderIdempotencyKey)
}

// pauseIfTransient waits a moment before the claim tries the store again,
// or answers 503 when err is not transient or the request may wait no more.
func pauseIfTransient(ctx context.Context, err error, deadline time.Time) error {
	if !events.Transient(err) || ctx.Err() != nil || time.Now().After(deadline) {
		return errorf(http.StatusServiceUnavailable, "idempotency store: %v", err)
	}
	select {
	case <-time.After(200 * time.Millisecond):
	case <-ctx.Done():
	}
	return nil
}

// replayedError ends a request whose stored answer was sent.
type replayedError struct{ err error }

func (e replayedError) Error() string { return "answer replayed" }

// recorder keeps a copy of what a handler wrote.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}
