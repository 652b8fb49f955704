package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cbroker/broker/events"
)

// sseWriteTimeout bounds one write to a GET /events client: a client that
// takes no bytes for that long is disconnected.
const sseWriteTimeout = 5 * time.Second

// eventFilter selects events for one GET /events client. Each non-empty
// part must match (AND); within a part any value may (OR).
type eventFilter struct {
	tasks map[string]bool
	nodes map[string]bool
	types map[events.Type]bool
	// names are types without version, "<aggregate>.<name>".
	names map[string]bool
	tags  []tagFilter
}

type tagFilter struct{ name, value string }

func (f *eventFilter) match(it *item) bool {
	if len(f.tasks) > 0 && (it.agg != events.AggregateTask || !f.tasks[it.id]) {
		return false
	}
	if len(f.nodes) > 0 && !f.nodes[it.node] {
		return false
	}
	if (len(f.types) > 0 || len(f.names) > 0) && !f.types[it.typ] && !f.names[it.agg+"."+it.typ.Name()] {
		return false
	}
	if len(f.tags) == 0 {
		return true
	}
	for _, t := range f.tags {
		if v, ok := it.tags[t.name]; ok && v == t.value {
			return true
		}
	}
	return false
}

// subject is the narrowest stream subject holding every event f can match.
func (f *eventFilter) subject() string {
	if len(f.tasks) == 1 {
		for id := range f.tasks {
			return events.AggregateSubjects(events.AggregateTask, id)
		}
	}
	return events.AllSubjects
}

// parseEventsQuery reads GET /events's filters and resume point: the
// Last-Event-ID header, else the since parameter; nil means new events only.
func parseEventsQuery(c echo.Context) (*eventFilter, *uint64, error) {
	f := &eventFilter{tasks: map[string]bool{}, nodes: map[string]bool{}, types: map[events.Type]bool{}, names: map[string]bool{}}
	var since *uint64
	for key, values := range c.QueryParams() {
		for _, v := range values {
			if v == "" {
				return nil, nil, errorf(http.StatusBadRequest, "parameter %s is empty", key)
			}
			if err := f.add(key, v); err != nil {
				return nil, nil, err
			}
		}
		if key == "since" {
			if len(values) > 1 {
				return nil, nil, errorf(http.StatusBadRequest, "since is given %d times", len(values))
			}
			seq, err := parseSeq("since", values[0])
			if err != nil {
				return nil, nil, err
			}
			since = &seq
		}
	}
	if id := c.Request().Header.Get("Last-Event-ID"); id != "" {
		seq, err := parseSeq("Last-Event-ID", id)
		if err != nil {
			return nil, nil, err
		}
		since = &seq
	}
	return f, since, nil
}

func (f *eventFilter) add(key, v string) error {
	switch key {
	case "task", "node":
		if strings.ContainsAny(v, ".*> \t\r\n") {
			return errorf(http.StatusBadRequest, "%s %q is not a valid id", key, v)
		}
		if key == "task" {
			f.tasks[v] = true
		} else {
			f.nodes[v] = true
		}
	case "type":
		return f.addType(v)
	case "tag":
		name, value, ok := strings.Cut(v, ":")
		if !ok || name == "" {
			return errorf(http.StatusBadRequest, "tag %q: want name:value", v)
		}
		f.tags = append(f.tags, tagFilter{name: name, value: value})
	case "since":
	default:
		return errorf(http.StatusBadRequest, "unknown parameter %q; GET /events takes task, node, type, tag and since", key)
	}
	return nil
}

// addType accepts a registered type ("task.completed.v1") or one without
// version ("task.completed"), which matches every version.
func (f *eventFilter) addType(v string) error {
	if events.Known(events.Type(v)) {
		f.types[events.Type(v)] = true
		return nil
	}
	for _, t := range events.Types() {
		if t.Aggregate()+"."+t.Name() == v {
			f.names[v] = true
			return nil
		}
	}
	return errorf(http.StatusBadRequest, "unknown event type %q (see docs/events.md)", v)
}

func parseSeq(name, v string) (uint64, error) {
	seq, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, errorf(http.StatusBadRequest, "%s %q is not a stream sequence", name, v)
	}
	return seq, nil
}

// streamedEvent is the data of one SSE message: the envelope with its
// stream sequence.
type streamedEvent struct {
	Seq uint64 `json:"seq"`
	events.Envelope
}

// sseFrame encodes an event as one SSE message.
func sseFrame(env events.Envelope) ([]byte, error) {
	data, err := json.Marshal(streamedEvent{Seq: env.Seq, Envelope: env})
	if err != nil {
		return nil, fmt.Errorf("encoding event %d: %w", env.Seq, err)
	}
	return fmt.Appendf(nil, "id: %d\nevent: %s\ndata: %s\n\n", env.Seq, env.Type, data), nil
}

// sseWriter writes SSE messages and flushes each.
type sseWriter struct {
	w  *echo.Response
	rc *http.ResponseController
}

func newSSEWriter(c echo.Context) *sseWriter {
	return &sseWriter{w: c.Response(), rc: http.NewResponseController(c.Response())}
}

func (s *sseWriter) start() error {
	h := s.w.Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set(echo.HeaderCacheControl, "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	s.w.WriteHeader(http.StatusOK)
	return s.rc.Flush()
}

func (s *sseWriter) write(b []byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout)) // unsupported only in tests' recorders
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	return s.rc.Flush()
}

func (s *sseWriter) event(it *item) error { return s.write(it.frame) }

func (s *sseWriter) comment(text string) error { return s.write([]byte(": " + text + "\n\n")) }

// streamEvents handles GET /events: server-sent events, filtered, from the
// resume point or from now on.
func (g *Gateway) streamEvents(c echo.Context) error {
	hub := g.cfg.Events
	if hub == nil {
		return errorf(http.StatusServiceUnavailable, "the event stream is not enabled")
	}
	f, since, err := parseEventsQuery(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	if err := hub.waitReady(ctx); err != nil {
		if ctx.Err() != nil {
			return nil //nolint:nilerr // the client left
		}
		return errorf(http.StatusServiceUnavailable, "the event stream is not available: %v", err)
	}
	out := newSSEWriter(c)
	var sub *subscription
	if since == nil {
		// Subscribed before the answer starts: every event appended once
		// the client has the headers reaches it.
		if sub, err = hub.subscribe(ctx, f); err != nil {
			return errorf(http.StatusServiceUnavailable, "the event stream is not available: %v", err)
		}
		err = out.start()
	} else if err = out.start(); err == nil {
		sub, err = hub.resume(ctx, f, *since, out.event)
	}
	if sub != nil {
		defer hub.unsubscribe(sub)
	}
	if err != nil {
		g.log.DebugContext(ctx, "event stream ended", slog.Any("error", err))
		return nil
	}
	g.pump(c, out, sub)
	return nil
}

// pump writes a subscription's events and heartbeats until the client
// leaves, the hub ends the subscription or the server shuts down.
func (g *Gateway) pump(c echo.Context, out *sseWriter, sub *subscription) {
	ctx := c.Request().Context()
	heartbeat := time.NewTicker(g.cfg.EventsHeartbeat)
	defer heartbeat.Stop()
	for {
		var err error
		select {
		case it := <-sub.ch:
			err = out.event(it)
		case <-heartbeat.C:
			err = out.comment("heartbeat")
		case <-sub.done:
			if errors.Is(sub.err, ErrSlowClient) {
				g.log.InfoContext(ctx, "event stream client too slow; disconnected", slog.String("remote_addr", c.RealIP()))
				_ = out.comment("too slow: disconnected; resume with Last-Event-ID")
			}
			return
		case <-g.closing:
			return
		case <-ctx.Done():
			return
		}
		if err != nil {
			g.log.DebugContext(ctx, "event stream client gone", slog.Any("error", err))
			return
		}
	}
}
