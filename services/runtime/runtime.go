// Package runtime defines what the runner and the health monitor need from
// the thing that runs containers on a node. The Docker implementation is in
// package docker; package benchnoop holds a no-op runtime for benchmarks.
package runtime

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned when an attempt's container does not exist.
var ErrNotFound = errors.New("container not found")

// Node identifies the node a call is for.
type Node struct {
	ID       string
	Hostname string
}

// Spec is everything needed to run one attempt of a task.
type Spec struct {
	TaskID  string
	Attempt int
	// Name is the deterministic container name of the attempt.
	Name  string
	Image string
	// Cmd is run as `sh -c Cmd`, as the seed does.
	Cmd string
	// Binds are "<host path>:<container path>" mounts, already resolved from
	// the operator's mount names.
	Binds []string
	// Labels mark the container as the broker's.
	Labels map[string]string
}

// Exit is how a container ended.
type Exit struct {
	Code      int
	OOMKilled bool
	// Vanished is set when the container was gone when its end was looked
	// up (removed by someone else).
	Vanished   bool
	Error      string
	StartedAt  time.Time
	FinishedAt time.Time
}

// Container is a handle on an attempt's container.
type Container interface {
	// ID returns the runtime's id of the container.
	ID() string
	// StartedAt returns when the container started.
	StartedAt() time.Time
	// Wait blocks until the container exits, or ctx is done.
	Wait(ctx context.Context) (Exit, error)
}

// StartError is returned by Start when the container could not be created
// or started. NodeFault tells whether the node rather than the task (a
// missing image, a bad command) is to blame.
type StartError struct {
	Msg       string
	NodeFault bool
}

func (e *StartError) Error() string { return e.Msg }

// Runtime runs containers on nodes.
type Runtime interface {
	// Supports reports whether the runtime can talk to a node with this
	// hostname.
	Supports(hostname string) bool
	// Ping checks that the node answers.
	Ping(ctx context.Context, node Node) error
	// Start runs the attempt's container, pulling its image when missing.
	// A container of the same name that already exists (a repeated start of
	// the same attempt) is adopted: started if it was only created, returned
	// as it is otherwise.
	Start(ctx context.Context, node Node, spec Spec) (Container, error)
	// Attach returns the handle of an attempt's existing container, or
	// ErrNotFound.
	Attach(ctx context.Context, node Node, spec Spec) (Container, error)
	// Logs returns the container's stdout and stderr interleaved, at most
	// limit bytes; truncated reports whether there was more.
	Logs(ctx context.Context, node Node, name string, limit int64) (logs []byte, truncated bool, err error)
	// Remove removes the container, killing it if it runs. A missing
	// container is not an error.
	Remove(ctx context.Context, node Node, name string) error
	// Kill sends SIGKILL to the container. A container that does not run is
	// not an error.
	Kill(ctx context.Context, node Node, name string) error
	// Stop sends SIGTERM to the container, then SIGKILL after grace. A
	// container that does not run is not an error.
	Stop(ctx context.Context, node Node, name string, grace time.Duration) error
	// List returns the containers on the node labelled with brokerID,
	// running or not.
	List(ctx context.Context, node Node, brokerID string) ([]Found, error)
}

// Found is a container of the broker's found on a node.
type Found struct {
	Name    string
	TaskID  string
	Attempt int
	Running bool
	// ExitCode is meaningful when the container does not run.
	ExitCode int
}

// Set picks the runtime for a node among several.
type Set []Runtime

// For returns the first runtime that supports the hostname.
func (s Set) For(hostname string) (Runtime, bool) {
	for _, r := range s {
		if r.Supports(hostname) {
			return r, true
		}
	}
	return nil, false
}

// Labels the broker puts on every container it creates. Only containers
// carrying LabelBroker are ever removed by the broker.
const (
	LabelBroker  = "io.cbroker.broker"
	LabelTask    = "io.cbroker.task"
	LabelAttempt = "io.cbroker.attempt"
)
