package projections

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/cbroker/broker/events"
)

func (s *State) applyRegistered(env events.Envelope, p *events.NodeRegistered) error {
	switch {
	case p.NodeID != env.AggregateID:
		return rejectf("payload node %q does not match aggregate %q", p.NodeID, env.AggregateID)
	case s.Nodes[p.NodeID] != nil:
		return rejectCode(CodeExists, "node %s already exists", p.NodeID)
	case p.Hostname == "":
		return rejectf("node %s has no hostname", p.NodeID)
	}
	if other, taken := s.hostnames[p.Hostname]; taken {
		return rejectCode(CodeHostnameTaken, "hostname %s is already taken by node %s", p.Hostname, other)
	}
	if err := checkSlots(p.NodeID, p.Slots); err != nil {
		return err
	}
	n := &Node{
		ID:             p.NodeID,
		Hostname:       p.Hostname,
		RunnerProvider: cmp.Or(p.RunnerProvider, "docker"),
		SlotsWanted:    p.Slots,
		Mounts:         p.Mounts,
		Status:         NodeUnavailable,
		AcceptNewTasks: true,
		RegisteredAt:   p.RegisteredAt,
		UpdatedAt:      env.Time,
		StatusSeq:      env.Seq,
	}
	for _, typ := range slices.Sorted(maps.Keys(p.Slots)) {
		for i := 1; i <= p.Slots[typ]; i++ {
			n.Slots = append(n.Slots, &Slot{ID: fmt.Sprintf("%s-%d", typ, i), ExecutionType: typ, Status: SlotAvailable})
		}
	}
	s.Nodes[n.ID] = n
	s.hostnames[n.Hostname] = n.ID
	s.renameNodes()
	return nil
}

// renameNodes gives every node its friendly name as the seed does: ordered by
// runner provider (descending), hostname, id, named n001d, n002d, ...
func (s *State) renameNodes() {
	nodes := make([]*Node, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b *Node) int {
		return cmp.Or(-strings.Compare(a.RunnerProvider, b.RunnerProvider),
			strings.Compare(a.Hostname, b.Hostname), strings.Compare(a.ID, b.ID))
	})
	for i, n := range nodes {
		n.Name = fmt.Sprintf("n%03d%c", i+1, n.RunnerProvider[0])
	}
}

func applyUp(n *Node, env events.Envelope, p *events.NodeUp) error {
	if n.Status == NodeAvailable {
		return rejectf("node %s is already available", n.ID)
	}
	n.Status = NodeAvailable
	n.LastSuccessAt = p.At
	n.StatusSeq = env.Seq
	return nil
}

func applyUnstable(n *Node, env events.Envelope, p *events.NodeUnstable) error {
	if n.Status != NodeAvailable {
		return rejectf("node %s is %s, not available", n.ID, n.Status)
	}
	n.Status = NodeUnstable
	n.LastError = lastError(p.Error, p.At)
	n.StatusSeq = env.Seq
	return nil
}

func applyDown(n *Node, env events.Envelope, p *events.NodeDown) error {
	if n.Status == NodeUnavailable {
		return rejectf("node %s is already unavailable", n.ID)
	}
	n.Status = NodeUnavailable
	n.LastError = lastError(p.Error, p.At)
	n.StatusSeq = env.Seq
	return nil
}

// lastError formats a node error as the seed's last_error: "<message> at <time>".
func lastError(msg string, at time.Time) string {
	if at.IsZero() {
		return msg
	}
	return msg + " at " + at.UTC().Format(time.RFC3339)
}
