package gateway

import (
	"encoding/json"
	"net/http"
	"slices"

	"github.com/labstack/echo/v4"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// TimelineEntry is one event of a task's history with the fold's verdict.
type TimelineEntry struct {
	Seq           uint64          `json:"seq"`
	ID            string          `json:"id"`
	Type          events.Type     `json:"type"`
	Time          *string         `json:"time"`
	Actor         string          `json:"actor,omitempty"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	CausationID   string          `json:"causation_id,omitempty"`
	Accepted      bool            `json:"accepted"`
	Reason        string          `json:"reason,omitempty"`
	Data          json.RawMessage `json:"data"`
}

// taskEvents handles GET /tasks/:uuid/events: the task's whole history in
// log order, rejected proposals included, each event whole (its payload says
// e.g. every retry's cause) with the fold's verdict.
func (g *Gateway) taskEvents(c echo.Context) error {
	id := c.Param("uuid")
	var (
		history []projections.Verdict
		found   bool
	)
	g.cfg.Replica.Read(func(s *projections.State) {
		if t, ok := s.Tasks[id]; ok {
			history, found = slices.Clone(t.History), true
		}
	})
	if !found {
		return errorf(http.StatusNotFound, "task %s not found", id)
	}
	ctx := c.Request().Context()
	stream, err := g.cfg.JetStream.Stream(ctx, events.StreamName)
	if err != nil {
		return errorf(http.StatusServiceUnavailable, "the event log is not available: %v", err)
	}
	out := make([]TimelineEntry, 0, len(history))
	for _, v := range history {
		msg, err := stream.GetMsg(ctx, v.Seq)
		if err != nil {
			return errorf(http.StatusServiceUnavailable, "reading event %d: %v", v.Seq, err)
		}
		env, err := events.Decode(msg.Data)
		if err != nil {
			return errorf(http.StatusInternalServerError, "event %d: %v", v.Seq, err)
		}
		out = append(out, TimelineEntry{
			Seq: v.Seq, ID: env.ID, Type: env.Type, Time: projections.FormatTime(env.Time), Actor: env.Actor,
			CorrelationID: env.CorrelationID, CausationID: env.CausationID,
			Accepted: v.Accepted, Reason: v.Reason, Data: env.Data,
		})
	}
	return c.JSON(http.StatusOK, out)
}
