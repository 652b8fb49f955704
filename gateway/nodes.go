package gateway

import (
	"maps"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// nodeJSON is the seed's NodeSerializer, field for field.
type nodeJSON struct {
	UUID                  string                 `json:"uuid"`
	Hostname              string                 `json:"hostname"`
	Status                projections.NodeStatus `json:"status"`
	AcceptNewTasks        bool                   `json:"accept_new_tasks"`
	SlotsExecutionTypes   map[string]int         `json:"slots_execution_types"`
	RunnerProvider        string                 `json:"runner_provider"`
	RunnerCapacityReached bool                   `json:"runner_capacity_reached"`
}

func newNodeJSON(n *projections.Node) nodeJSON {
	slots := maps.Clone(n.SlotsWanted) // answered after the fold's lock is released
	if slots == nil {
		slots = map[string]int{}
	}
	return nodeJSON{
		UUID: n.ID, Hostname: n.Hostname, Status: n.Status, AcceptNewTasks: n.AcceptNewTasks,
		SlotsExecutionTypes: slots, RunnerProvider: n.RunnerProvider,
	}
}

// listNodes handles GET /nodes.
func (g *Gateway) listNodes(c echo.Context) error {
	out := []nodeJSON{}
	g.cfg.Replica.Read(func(s *projections.State) {
		for _, n := range s.SortedNodes() {
			out = append(out, newNodeJSON(n))
		}
	})
	return c.JSON(http.StatusOK, out)
}

func (g *Gateway) node(id string) (nodeJSON, error) {
	var (
		out   nodeJSON
		found bool
	)
	g.cfg.Replica.Read(func(s *projections.State) {
		if n, ok := s.Nodes[id]; ok {
			out, found = newNodeJSON(n), true
		}
	})
	if !found {
		return out, errorf(http.StatusNotFound, "node %s not found", id)
	}
	return out, nil
}

// showNode handles GET /nodes/:uuid.
func (g *Gateway) showNode(c echo.Context) error {
	n, err := g.node(c.Param("uuid"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, n)
}

// createNode handles POST /nodes: 201 and the node, which stays unavailable
// until its first successful probe.
func (g *Gateway) createNode(c echo.Context) error {
	body, err := requestBody(c)
	if err != nil {
		return err
	}
	req, err := parseNodeRequest(body, g.cfg.CheckHostname)
	if err != nil {
		return err
	}
	id := newID(c, "node")
	p := &events.NodeRegistered{
		NodeID: id, Hostname: req.Hostname, Slots: req.Slots, RunnerProvider: "docker", Mounts: req.Mounts,
		RegisteredAt: events.Time(g.cfg.Now()),
	}
	out, own, err := g.propose(c, "node:"+id+":registered", p)
	if err != nil {
		return err
	}
	if !out.Accepted {
		if out.Code == projections.CodeHostnameTaken {
			return validationError{"hostname": {msgHostnameTaken}}
		}
		return errorf(http.StatusConflict, "node not accepted: %s", out.Reason)
	}
	// Answer with the node as the registration left it (unavailable until
	// its first probe), even if a probe has already answered.
	return c.JSON(http.StatusCreated, newNodeJSON(own.Nodes[id]))
}
