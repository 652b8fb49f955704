package gateway

import (
	"cmp"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// taskJSON is the seed's TaskSerializer, field for field.
type taskJSON struct {
	UUID           string                 `json:"uuid"`
	Status         projections.TaskStatus `json:"status"`
	ExitCode       *int                   `json:"exit_code"`
	Error          *string                `json:"error"`
	TryCount       int                    `json:"try_count"`
	CreatedAt      *string                `json:"created_at"`
	StartedAt      *string                `json:"started_at"`
	FinishedAt     *string                `json:"finished_at"`
	SecondsRunning *int                   `json:"seconds_running"`
	ExecutionType  string                 `json:"execution_type"`
}

func newTaskJSON(v projections.TaskView) taskJSON {
	return taskJSON{
		UUID: v.UUID, Status: v.Status, ExitCode: v.ExitCode, Error: v.Error, TryCount: v.TryCount,
		CreatedAt: v.CreatedAt, StartedAt: v.StartedAt, FinishedAt: v.FinishedAt,
		SecondsRunning: v.SecondsRunning, ExecutionType: v.ExecutionType,
	}
}

// taskView renders a task from the fold, or a 404.
func (g *Gateway) taskView(id string) (projections.TaskView, error) {
	var (
		v     projections.TaskView
		found bool
	)
	now := g.cfg.Now()
	g.cfg.Replica.Read(func(s *projections.State) {
		if t, ok := s.Tasks[id]; ok {
			v, found = s.NewTaskView(t, now), true
		}
	})
	if !found {
		return v, errorf(http.StatusNotFound, "task %s not found", id)
	}
	return v, nil
}

// mountNames returns the storage mount names a task may use: the
// broker-wide ones and every node's own.
func (g *Gateway) mountNames() map[string]string {
	names := map[string]string{}
	for name := range g.cfg.Mounts {
		names[name] = ""
	}
	g.cfg.Replica.Read(func(s *projections.State) {
		for _, n := range s.Nodes {
			for name := range n.Mounts {
				names[name] = ""
			}
		}
	})
	return names
}

// requestID is the client's X-Request-Id, or the one the middleware made.
func requestID(c echo.Context) string {
	if id := c.Request().Header.Get(echo.HeaderXRequestID); id != "" {
		return id
	}
	return c.Response().Header().Get(echo.HeaderXRequestID)
}

// msgWebhooksDisabled refuses a callback_url on a broker that cannot sign
// deliveries: it never sends them unsigned.
const msgWebhooksDisabled = "webhooks are disabled on this broker: no webhook secret is configured (--webhook-secret)"

// createTask handles POST /tasks: 200 and the task, as the seed.
func (g *Gateway) createTask(c echo.Context) error {
	body, err := requestBody(c)
	if err != nil {
		return err
	}
	req, err := parseTaskRequest(body, g.mountNames())
	if err != nil {
		return err
	}
	if req.CallbackURL != "" && !g.cfg.Webhooks {
		return validationError{"callback_url": {msgWebhooksDisabled}}
	}
	tags := map[string]string{}
	for k, v := range req.Tags {
		tags[k] = v
	}
	tags["request_id"] = requestID(c)
	id := newID(c, "task")
	p := &events.TaskSubmitted{
		TaskID: id, Name: req.Name, Image: req.Image, Cmd: req.Cmd, ExecutionType: req.ExecutionType,
		StorageMounts: req.StorageMounts, Tags: tags, PersistLogs: req.PersistLogs,
		MaxRetries: max(g.cfg.MaxRetries, 0), CreatedAt: events.Time(g.cfg.Now()),
		RetryBackoffMinMs: g.cfg.RetryBackoffMin.Milliseconds(), RetryBackoffMaxMs: g.cfg.RetryBackoffMax.Milliseconds(),
		MaxNodeLosses: max(g.cfg.MaxNodeLosses, 0), TimeoutMs: cmp.Or(req.Timeout, g.cfg.TaskTimeout).Milliseconds(),
		CallbackURL: req.CallbackURL,
	}
	if req.MaxRetries != nil {
		p.MaxRetries = *req.MaxRetries
	}
	out, own, err := g.propose(c, "task:"+id+":submitted", p)
	if err != nil {
		return err
	}
	if out.Code == projections.CodeExists {
		// The idempotency key's task exists (its stored answer expired).
		v, err := g.taskView(id)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, newTaskJSON(v))
	}
	if !out.Accepted {
		return errorf(http.StatusConflict, "task not accepted: %s", out.Reason)
	}
	// Answer with the task as the submission left it (waiting), as the seed
	// does, even if the scheduler has already moved it on.
	return c.JSON(http.StatusOK, newTaskJSON(own.NewTaskView(own.Tasks[id], g.cfg.Now())))
}

// showTask handles GET /tasks/:uuid.
func (g *Gateway) showTask(c echo.Context) error {
	v, err := g.taskView(c.Param("uuid"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, newTaskJSON(v))
}

// taskLogs handles GET /tasks/:uuid/logs: {"logs": "..."}, live while the
// container runs, archived afterwards. Invalid UTF-8 bytes become '?', as
// the seed does; they never cause an error.
func (g *Gateway) taskLogs(c echo.Context) error {
	id := c.Param("uuid")
	if _, err := g.taskView(id); err != nil {
		return err
	}
	logs, err := g.cfg.Logs.TaskLogs(c.Request().Context(), id)
	if err != nil {
		return errorf(http.StatusBadGateway, "reading logs of task %s: %v", id, err)
	}
	return c.JSON(http.StatusOK, map[string]string{"logs": validUTF8(logs)})
}

// validUTF8 replaces every byte that is not part of valid UTF-8 with '?'.
func validUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b))
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size <= 1 {
			sb.WriteByte('?')
			b = b[1:]
			continue
		}
		sb.Write(b[:size])
		b = b[size:]
	}
	return sb.String()
}
