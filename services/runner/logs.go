package runner

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/runtime"
)

// ErrTaskNotFound is returned for logs of a task the fold does not know.
var ErrTaskNotFound = errors.New("task not found")

// LogReader reads a task's logs: live from its node while its container
// runs, from the archive otherwise.
type LogReader struct {
	Replica  *projections.Replica
	JS       jetstream.JetStream
	Runtimes runtime.Set
	// Limit caps live logs. Defaults to DefaultLogLimit.
	Limit int64
}

// TaskLogs returns the logs of a task's current attempt while it runs, and
// of the latest attempt that archived any otherwise (empty if none did).
func (l *LogReader) TaskLogs(ctx context.Context, taskID string) ([]byte, error) {
	var (
		found, live bool
		node        runtime.Node
		container   string
		archived    projections.LogRef
		hasArchive  bool
	)
	l.Replica.Read(func(s *projections.State) {
		t, ok := s.Tasks[taskID]
		if !ok {
			return
		}
		found = true
		if t.Status == projections.TaskStarted && t.Active() {
			if n, ok := s.Nodes[t.NodeID]; ok {
				live, node, container = true, runtime.Node{ID: n.ID, Hostname: n.Hostname}, t.ContainerName
			}
		}
		archived, hasArchive = t.LatestLogs()
	})
	if !found {
		return nil, ErrTaskNotFound
	}
	if live {
		if rt, ok := l.Runtimes.For(node.Hostname); ok {
			limit := l.Limit
			if limit <= 0 {
				limit = DefaultLogLimit
			}
			logs, _, err := rt.Logs(ctx, node, container, limit)
			if err == nil {
				return logs, nil
			}
			if !errors.Is(err, runtime.ErrNotFound) {
				return nil, fmt.Errorf("reading live logs of task %s: %w", taskID, err)
			}
		}
	}
	if !hasArchive {
		return []byte{}, nil
	}
	obs, err := l.JS.ObjectStore(ctx, events.ObjectStoreLogs)
	if err != nil {
		return nil, fmt.Errorf("opening log store: %w", err)
	}
	b, err := obs.GetBytes(ctx, archived.Object)
	if err != nil {
		return nil, fmt.Errorf("reading archived logs %s: %w", archived.Object, err)
	}
	return b, nil
}
