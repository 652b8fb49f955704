package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// Lists, status and health. All of them read the process's fold, the same
// state the KV views are written from, with the same view builders
// (projections.NewTaskView, NewNodeView): a list is consistent at one
// sequence and includes the caller's own writes.

// taskFilter selects tasks by status and tags (all must match).
type taskFilter struct {
	status projections.TaskStatus
	tags   map[string]string
}

func (f taskFilter) match(t *projections.Task) bool {
	if f.status != "" && t.Status != f.status {
		return false
	}
	for k, v := range f.tags {
		if tv, ok := t.Tags[k]; !ok || tv != v {
			return false
		}
	}
	return true
}

// parseTaskFilter reads ?status=...&tags[name]=value... from a query.
func parseTaskFilter(q url.Values) (taskFilter, error) {
	f := taskFilter{status: projections.TaskStatus(q.Get("status")), tags: map[string]string{}}
	if f.status != "" && !validStatus(f.status) {
		return f, errorf(http.StatusBadRequest, "unknown status %q; see GET /status/task_statuses", f.status)
	}
	for k, vs := range q {
		if name, ok := strings.CutPrefix(k, "tags["); ok && strings.HasSuffix(name, "]") && len(vs) > 0 {
			f.tags[strings.TrimSuffix(name, "]")] = vs[len(vs)-1]
		}
	}
	return f, nil
}

func validStatus(s projections.TaskStatus) bool {
	for _, st := range projections.TaskStatuses {
		if st == s {
			return true
		}
	}
	return false
}

// parseLimit reads ?limit=; missing means def, 0 means no limit (as the
// seed), anything else must be a whole number.
func parseLimit(q url.Values, def, maxLimit int) (int, error) {
	raw := q.Get("limit")
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 0 {
		return 0, errorf(http.StatusBadRequest, "limit must be a whole number, not %q", raw)
	}
	if maxLimit > 0 && (n == 0 || n > maxLimit) {
		n = maxLimit
	}
	return n, nil
}

// statusTasks handles GET /status/tasks: the seed's status panel list,
// newest first, limit 200 by default (0: all), filtered by status and tags.
func (g *Gateway) statusTasks(c echo.Context) error {
	q := c.QueryParams()
	f, err := parseTaskFilter(q)
	if err != nil {
		return err
	}
	limit, err := parseLimit(q, 200, 0)
	if err != nil {
		return err
	}
	views := []projections.TaskView{}
	err = g.readAt(c, func(s *projections.State, now time.Time) { views, _ = listTasks(s, now, f, 0, limit) })
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, views)
}

// tasksPage is the answer of GET /tasks.
type tasksPage struct {
	Tasks []projections.TaskView `json:"tasks"`
	// NextCursor continues the list (pass it as ?cursor=); null at the end.
	NextCursor *string `json:"next_cursor"`
}

// listTasksPage handles GET /tasks, which the seed lacked: the filters of
// /status/tasks with cursor pagination (limit 100 by default, 1000 at
// most), newest first. A cursor is stable: tasks submitted after the first
// page do not shift later pages.
func (g *Gateway) listTasksPage(c echo.Context) error {
	q := c.QueryParams()
	f, err := parseTaskFilter(q)
	if err != nil {
		return err
	}
	limit, err := parseLimit(q, 100, 1000)
	if err != nil {
		return err
	}
	var before uint64
	if raw := q.Get("cursor"); raw != "" {
		if before, err = strconv.ParseUint(raw, 10, 64); err != nil || before == 0 {
			return errorf(http.StatusBadRequest, "invalid cursor %q", raw)
		}
	}
	views, more := g.listTasks(f, before, limit)
	page := tasksPage{Tasks: views}
	if more && len(views) > 0 {
		next := strconv.FormatUint(views[len(views)-1].SubmitSeq, 10)
		page.NextCursor = &next
	}
	return c.JSON(http.StatusOK, page)
}

// listTasks returns up to limit (0: all) matching tasks submitted before
// sequence before (0: any), newest first, and whether more match.
func (g *Gateway) listTasks(f taskFilter, before uint64, limit int) ([]projections.TaskView, bool) {
	var (
		views []projections.TaskView
		more  bool
	)
	g.cfg.Replica.Read(func(s *projections.State) { views, more = listTasks(s, g.cfg.Now(), f, before, limit) })
	return views, more
}

func listTasks(s *projections.State, now time.Time, f taskFilter, before uint64, limit int) ([]projections.TaskView, bool) {
	views := []projections.TaskView{}
	more := false
	visit := func(t *projections.Task) bool {
		if !f.match(t) {
			return true
		}
		if limit > 0 && len(views) == limit {
			more = true
			return false
		}
		views = append(views, s.NewTaskView(t, now))
		return true
	}
	if before == 0 {
		s.TasksNewestFirst(visit)
	} else {
		s.TasksOlderThan(before, visit)
	}
	return views, more
}

// statusNodes handles GET /status/nodes: every node with its slots and
// usage per execution type, by name.
func (g *Gateway) statusNodes(c echo.Context) error {
	views := []projections.NodeView{}
	err := g.readAt(c, func(s *projections.State, _ time.Time) {
		for _, n := range s.SortedNodes() {
			views = append(views, s.NewNodeView(n))
		}
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, views)
}

// PoolNode is a node in GET /status, with the tasks on it.
type PoolNode struct {
	projections.NodeView
	Jobs []projections.TaskView `json:"jobs"`
}

// Pool is the answer of GET /status.
type Pool struct {
	Nodes []PoolNode `json:"nodes"`
	// Tasks counts tasks per status.
	Tasks map[projections.TaskStatus]int `json:"tasks"`
	// Queues counts the waiting tasks per execution type.
	Queues map[string]int `json:"queues"`
	// Seq is the log sequence this view reflects.
	Seq uint64 `json:"seq"`
	// At is when the event at Seq was stored.
	At time.Time `json:"at,omitzero"`
}

// statusPool handles GET /status: the pool the seed's README promised (and
// the seed answered 404): nodes with their slots and running jobs, task
// counts per status and queue lengths per execution type.
func (g *Gateway) statusPool(c echo.Context) error {
	var p Pool
	err := g.readAt(c, func(s *projections.State, now time.Time) {
		p = Pool{Nodes: []PoolNode{}, Tasks: map[projections.TaskStatus]int{}, Queues: map[string]int{}, Seq: s.Seq, At: s.StoredAt}
		jobs := map[string][]projections.TaskView{}
		for _, t := range s.ActiveTasks() {
			jobs[t.NodeID] = append(jobs[t.NodeID], s.NewTaskView(t, now))
		}
		for _, n := range s.SortedNodes() {
			p.Nodes = append(p.Nodes, PoolNode{NodeView: s.NewNodeView(n), Jobs: append([]projections.TaskView{}, jobs[n.ID]...)})
		}
		for _, st := range projections.TaskStatuses {
			p.Tasks[st] = s.TaskCounts[st]
		}
		for _, typ := range s.QueuedTypes() {
			p.Queues[typ] = len(s.Queue(typ))
		}
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

// statusTags handles GET /status/tags: the tag names of current tasks.
func (g *Gateway) statusTags(c echo.Context) error {
	var names []string
	g.cfg.Replica.Read(func(s *projections.State) { names = s.TagNames() })
	if names == nil {
		names = []string{}
	}
	return c.JSON(http.StatusOK, names)
}

// maxTagValues caps /status/tag_values, as the seed's take(50).
const maxTagValues = 50

// statusTagValues handles GET /status/tag_values?tag_name=: the values of a
// tag (the seed always answered []), sorted, at most 50; 404 for an unknown
// tag, as the seed.
func (g *Gateway) statusTagValues(c echo.Context) error {
	name := c.QueryParam("tag_name")
	if name == "" {
		return errorf(http.StatusBadRequest, "tag_name is required")
	}
	var (
		values []string
		ok     bool
	)
	g.cfg.Replica.Read(func(s *projections.State) { values, ok = s.TagValues(name) })
	if !ok {
		return errorf(http.StatusNotFound, "no task has the tag %q", name)
	}
	return c.JSON(http.StatusOK, values[:min(len(values), maxTagValues)])
}

// statusTaskStatuses handles GET /status/task_statuses.
func (g *Gateway) statusTaskStatuses(c echo.Context) error {
	return c.JSON(http.StatusOK, projections.TaskStatuses)
}

// maxLag is how many events the fold may be behind the log before
// /healthcheck reports an error.
const maxLag = 10000

// health is the answer of GET /healthcheck.
type health struct {
	Status  string   `json:"status"` // OK | ERROR
	Reasons []string `json:"reasons,omitempty"`
	NATS    struct {
		Connected bool   `json:"connected"`
		Status    string `json:"status"`
	} `json:"nats"`
	Events struct {
		// LastSeq is the last sequence in the log; AppliedSeq the last one
		// this process's fold applied.
		LastSeq    uint64 `json:"last_seq"`
		AppliedSeq uint64 `json:"applied_seq"`
		Lag        uint64 `json:"lag"`
	} `json:"events"`
	Projector struct {
		// Seq is the last sequence written to the KV views.
		Seq uint64 `json:"seq"`
		Lag uint64 `json:"lag"`
	} `json:"projector"`
	Nodes        int `json:"nodes"`
	Slots        int `json:"slots"`
	PendingTasks int `json:"pending_tasks"`
}

// healthcheck handles GET /healthcheck: the broker's own dependencies, as
// they are. 200 with status OK, 503 with status ERROR and the reasons (the
// seed always answered 200).
func (g *Gateway) healthcheck(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	var h health
	h.Status = "OK"
	fail := func(reason string) { h.Status, h.Reasons = "ERROR", append(h.Reasons, reason) }
	if nc := g.cfg.JetStream.Conn(); nc != nil {
		h.NATS.Status = nc.Status().String()
		h.NATS.Connected = nc.Status() == nats.CONNECTED
	}
	if !h.NATS.Connected {
		fail("not connected to NATS")
	}
	stream, err := g.cfg.JetStream.Stream(ctx, events.StreamName)
	if err == nil {
		info, ierr := stream.Info(ctx)
		if ierr == nil {
			h.Events.LastSeq = info.State.LastSeq
		}
		err = ierr
	}
	if err != nil {
		fail("event stream " + events.StreamName + ": " + err.Error())
	}
	g.cfg.Replica.Read(func(s *projections.State) {
		h.Events.AppliedSeq = s.Seq
		h.Nodes = len(s.Nodes)
		for _, n := range s.Nodes {
			h.Slots += len(n.Slots)
		}
		h.PendingTasks = s.TaskCounts[projections.TaskWaiting] + s.TaskCounts[projections.TaskRetry]
	})
	h.Events.Lag = lag(h.Events.LastSeq, h.Events.AppliedSeq)
	if h.Events.Lag > maxLag {
		fail("the fold is " + strconv.FormatUint(h.Events.Lag, 10) + " events behind the log")
	}
	if kv, err := g.cfg.JetStream.KeyValue(ctx, events.BucketMeta); err == nil {
		if e, err := kv.Get(ctx, events.KeyProjectorSeq); err == nil {
			h.Projector.Seq, _ = strconv.ParseUint(string(e.Value()), 10, 64)
		}
	}
	h.Projector.Lag = lag(h.Events.LastSeq, h.Projector.Seq)
	if h.Projector.Lag > maxLag {
		fail("the KV views are " + strconv.FormatUint(h.Projector.Lag, 10) + " events behind the log")
	}
	code := http.StatusOK
	if h.Status != "OK" {
		code = http.StatusServiceUnavailable
	}
	return c.JSON(code, h)
}

func lag(last, applied uint64) uint64 {
	if applied >= last {
		return 0
	}
	return last - applied
}

// readAt calls f with the state the request asks for and the time its views
// are rendered at: the live fold, or with ?at=<sequence|RFC 3339 time> the
// fold as it stood at that point of the log, replayed from the newest
// snapshot before it. A point at or after the live fold's position reads the
// live fold.
func (g *Gateway) readAt(c echo.Context, f func(s *projections.State, now time.Time)) error {
	raw, ok := c.QueryParams()["at"]
	if !ok {
		g.cfg.Replica.Read(func(s *projections.State) { f(s, g.cfg.Now()) })
		return nil
	}
	target, err := projections.ParseTarget(raw[0])
	if err != nil {
		return errorf(http.StatusBadRequest, "invalid at: %v", err)
	}
	live := false
	g.cfg.Replica.Read(func(s *projections.State) {
		if (target.Seq == 0 || target.Seq >= s.Seq) && (target.Time.IsZero() || !target.Time.Before(s.StoredAt)) {
			live = true
			f(s, g.cfg.Now())
		}
	})
	if live {
		return nil
	}
	ctx := c.Request().Context()
	g.past.Lock() // one replay at a time: each holds a whole state
	defer g.past.Unlock()
	st, err := projections.FoldTo(ctx, g.cfg.JetStream, g.cfg.Snapshots, target)
	if err != nil {
		return fmt.Errorf("replaying the log to %s: %w", raw[0], err)
	}
	now := st.StoredAt
	if !target.Time.IsZero() {
		now = target.Time
	}
	f(st, now)
	return nil
}
