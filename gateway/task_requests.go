package gateway

import (
	"context"
	"fmt"
	"net/http"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// requestKey is the idempotency key of an event a request appends: derived
// from the client's X-Idempotency-Key when there is one (so a repeated
// request appends nothing new), unique otherwise.
func requestKey(c echo.Context, p events.Payload) string {
	if k := idempotencyKey(c); k != "" {
		return "idem:" + k + ":" + p.EventType().Name() + ":" + p.AggregateID()
	}
	return "req:" + uuid.NewString()
}

// taskRequest appends a request event for an existing task and returns the
// fold's verdict: a 404 if the task does not exist (any more).
func (g *Gateway) taskRequest(c echo.Context, p events.Payload) (projections.Outcome, error) {
	if _, err := g.taskView(p.AggregateID()); err != nil {
		return projections.Outcome{}, err
	}
	out, _, err := g.propose(c, requestKey(c, p), p)
	if err == nil && out.Code == projections.CodeNotFound {
		err = errorf(http.StatusNotFound, "task %s not found", p.AggregateID())
	}
	return out, err
}

// message is the seed's error body for task requests.
type message struct {
	Message string `json:"message"`
}

// markAsError handles PUT /tasks/:uuid/mark_as_error: only a failed task
// can be marked (acknowledged), else 422 with the seed's message.
func (g *Gateway) markAsError(c echo.Context) error {
	out, err := g.taskRequest(c, &events.MarkedAsError{TaskID: c.Param("uuid")})
	if err != nil {
		return err
	}
	if !out.Accepted {
		return c.JSON(http.StatusUnprocessableEntity, message{"Task must have failed status to be marked as error"})
	}
	return c.NoContent(http.StatusOK)
}

// killContainer handles POST /tasks/:uuid/kill_container: the running
// attempt's container is killed and the normal retry rules follow; 400 with
// the seed's message when the task is not running.
func (g *Gateway) killContainer(c echo.Context) error {
	id := c.Param("uuid")
	var (
		attempt int
		desc    string
	)
	g.cfg.Replica.Read(func(s *projections.State) {
		if t, ok := s.Tasks[id]; ok {
			attempt = t.Attempt
			desc = fmt.Sprintf("Task %s %s (%s runner_id: %s) request_id=%s is not running",
				t.Name, t.ID, t.Status, t.ContainerName, t.Tags["request_id"])
		}
	})
	out, err := g.taskRequest(c, &events.KillRequested{TaskID: id, Attempt: attempt})
	if err != nil {
		return err
	}
	if !out.Accepted {
		return c.JSON(http.StatusBadRequest, message{desc})
	}
	return c.NoContent(http.StatusOK)
}

// cancelTask handles POST /tasks/:uuid/cancel, which the seed lacked: a
// waiting task is cancelled at once, a running one has its container
// stopped (SIGTERM, then SIGKILL after a grace period); a cancelled task is
// never retried. 200 with the task; 409 if it has already ended.
func (g *Gateway) cancelTask(c echo.Context) error {
	id := c.Param("uuid")
	out, err := g.taskRequest(c, &events.CancelRequested{TaskID: id})
	if err != nil {
		return err
	}
	if !out.Accepted && out.Code != projections.CodeExists { // a repeated cancel is fine
		return errorf(http.StatusConflict, "%s", out.Reason)
	}
	v, err := g.taskView(id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, newTaskJSON(v))
}

// retryTask handles POST /status/retry_task/:uuid: run an ended task again
// with its retry count reset. Unlike the seed, only an ended task (failed,
// error, completed, cancelled) can be retried: 409 otherwise.
func (g *Gateway) retryTask(c echo.Context) error {
	out, err := g.taskRequest(c, &events.RetryRequested{TaskID: c.Param("uuid")})
	if err != nil {
		return err
	}
	if !out.Accepted {
		return errorf(http.StatusConflict, "%s", out.Reason)
	}
	return c.NoContent(http.StatusOK)
}

// deleteErrors handles DELETE /tasks/errors: every task in status error is
// deleted from the views (their history stays in the log).
func (g *Gateway) deleteErrors(c echo.Context) error {
	var ids []string
	g.cfg.Replica.Read(func(s *projections.State) {
		s.TasksNewestFirst(func(t *projections.Task) bool {
			if t.Status == projections.TaskError {
				ids = append(ids, t.ID)
			}
			return true
		})
	})
	if len(ids) == 0 {
		return c.NoContent(http.StatusOK)
	}
	envs := make([]events.Envelope, 0, len(ids))
	for _, id := range ids {
		p := &events.TaskDeleted{TaskID: id}
		env, err := events.New(requestKey(c, p), p, events.Meta{CorrelationID: requestID(c), Actor: g.cfg.Actor})
		if err != nil {
			return err
		}
		envs = append(envs, env)
	}
	ctx := c.Request().Context()
	acks, err := g.append(ctx, envs...)
	if err != nil {
		return err
	}
	var last uint64
	for _, a := range acks {
		last = max(last, a.Seq)
	}
	if err := g.waitApplied(ctx, last); err != nil {
		return err
	}
	return c.NoContent(http.StatusOK)
}

// waitApplied waits, bounded, until the fold has applied sequence seq.
func (g *Gateway) waitApplied(ctx context.Context, seq uint64) error {
	wctx, cancel := context.WithTimeout(ctx, g.cfg.ApplyTimeout)
	defer cancel()
	if _, err := g.cfg.Replica.WaitSeq(wctx, seq); err != nil && wctx.Err() != nil {
		return errorf(http.StatusServiceUnavailable, "stored but not applied in time: %v", err)
	}
	return nil
}

// tasksHealthcheck handles GET /tasks/healthcheck: FAILING while any task
// is failed (not yet acknowledged as error).
func (g *Gateway) tasksHealthcheck(c echo.Context) error {
	var failed int
	g.cfg.Replica.Read(func(s *projections.State) { failed = s.TaskCounts[projections.TaskFailed] })
	status := "WORKING"
	if failed > 0 {
		status = "FAILING"
	}
	return c.JSON(http.StatusOK, map[string]any{"status": status, "failed_tasks_count": failed})
}
