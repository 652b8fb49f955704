package gateway

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// nodeRequest appends a request event for an existing node and returns the
// fold's verdict: a 404 if the node does not exist (any more).
func (g *Gateway) nodeRequest(c echo.Context, p events.Payload) (projections.Outcome, *projections.State, error) {
	if _, err := g.node(p.AggregateID()); err != nil {
		return projections.Outcome{}, nil, err
	}
	out, own, err := g.propose(c, requestKey(c, p), p)
	if err == nil && out.Code == projections.CodeNotFound {
		err = errorf(http.StatusNotFound, "node %s not found", p.AggregateID())
	}
	return out, own, err
}

// updateNode handles PATCH and PUT /nodes/:uuid: the slot map is replaced
// (hostname is ignored, as in the seed). New slots are usable at once,
// surplus free slots go at once, surplus busy ones when they are released.
func (g *Gateway) updateNode(c echo.Context) error {
	body, err := requestBody(c)
	if err != nil {
		return err
	}
	req, err := parseNodeUpdate(body)
	if err != nil {
		return err
	}
	id := c.Param("uuid")
	out, _, err := g.nodeRequest(c, &events.NodeUpdated{NodeID: id, Slots: req.Slots, Mounts: req.Mounts})
	if err != nil {
		return err
	}
	if !out.Accepted {
		return errorf(http.StatusConflict, "%s", out.Reason)
	}
	n, err := g.node(id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, n)
}

// deleteNode handles DELETE /nodes/:uuid: 406 and nothing changed while any
// of the node's slots is busy, else 200 and the node is gone. The fold
// decides, in log order, so a reservation cannot slip in between the check
// and the removal.
func (g *Gateway) deleteNode(c echo.Context) error {
	out, _, err := g.nodeRequest(c, &events.NodeRemoved{NodeID: c.Param("uuid")})
	if err != nil {
		return err
	}
	if !out.Accepted {
		return errorf(http.StatusNotAcceptable, "%s; drain it (reject_new_tasks) and wait for its tasks to end", out.Reason)
	}
	return c.NoContent(http.StatusOK)
}

// acceptNewTasks handles POST /nodes/:uuid/accept_new_tasks (ends a drain).
func (g *Gateway) acceptNewTasks(c echo.Context) error { return g.setAcceptance(c, true) }

// rejectNewTasks handles POST /nodes/:uuid/reject_new_tasks (drain: running
// tasks finish, no new ones start there).
func (g *Gateway) rejectNewTasks(c echo.Context) error { return g.setAcceptance(c, false) }

func (g *Gateway) setAcceptance(c echo.Context, accept bool) error {
	if _, _, err := g.nodeRequest(c, &events.NodeAcceptanceChanged{NodeID: c.Param("uuid"), Accept: accept}); err != nil {
		return err
	}
	return c.NoContent(http.StatusOK)
}

// killContainers handles POST /nodes/:uuid/kill_containers: the containers
// of the node's running tasks are killed; the normal retry rules follow.
func (g *Gateway) killContainers(c echo.Context) error {
	if _, _, err := g.nodeRequest(c, &events.NodeKillRequested{NodeID: c.Param("uuid")}); err != nil {
		return err
	}
	return c.NoContent(http.StatusOK)
}

// nodeHealthJSON is the seed's NodeHealthcheckSerializer.
type nodeHealthJSON struct {
	UUID      string                 `json:"uuid"`
	Name      string                 `json:"name"`
	Hostname  string                 `json:"hostname"`
	Status    projections.NodeStatus `json:"status"`
	LastError *string                `json:"last_error"`
	CreatedAt *string                `json:"created_at"`
	UpdatedAt *string                `json:"updated_at"`
}

// nodesHealthcheck handles GET /nodes/healthcheck: FAILING while any node is
// unavailable (unstable ones do not count, as in the seed).
func (g *Gateway) nodesHealthcheck(c echo.Context) error {
	failed := []nodeHealthJSON{}
	g.cfg.Replica.Read(func(s *projections.State) {
		for _, n := range s.SortedNodes() {
			if n.Status != projections.NodeUnavailable {
				continue
			}
			v := s.NewNodeView(n)
			failed = append(failed, nodeHealthJSON{
				UUID: v.UUID, Name: v.Name, Hostname: v.Hostname, Status: v.Status,
				LastError: v.LastError, CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt,
			})
		}
	})
	status := "WORKING"
	if len(failed) > 0 {
		status = "FAILING"
	}
	return c.JSON(http.StatusOK, map[string]any{"status": status, "failed_nodes": failed})
}
