// Package benchnoop is a runtime for benchmarks only: it runs nothing. Its
// containers "exit" the moment they start, with code 0 (or N for the command
// "exit N", so that tests can drive retries and failures), so a benchmark
// measures the broker's control plane alone.
//
// It accepts only hostnames of the form bench-noop://<name>, which the REST
// API refuses, and only the bench command wires it into a broker: a real
// node can never be run by it.
package benchnoop

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/cbroker/broker/services/runtime"
)

// Scheme is the only hostname scheme the runtime supports.
const Scheme = "bench-noop"

// Runtime is the benchmark-only no-op runtime.
type Runtime struct{}

var _ runtime.Runtime = Runtime{}

// Supports implements runtime.Runtime: only bench-noop:// hostnames.
func (Runtime) Supports(hostname string) bool { return strings.HasPrefix(hostname, Scheme+"://") }

// Ping implements runtime.Runtime.
func (Runtime) Ping(context.Context, runtime.Node) error { return nil }

// Start implements runtime.Runtime.
func (Runtime) Start(_ context.Context, _ runtime.Node, spec runtime.Spec) (runtime.Container, error) {
	return container{at: time.Now(), code: exitCode(spec.Cmd)}, nil
}

// Attach implements runtime.Runtime.
func (Runtime) Attach(_ context.Context, _ runtime.Node, spec runtime.Spec) (runtime.Container, error) {
	return container{at: time.Now(), code: exitCode(spec.Cmd)}, nil
}

// exitCode is N for the command "exit N", 0 for any other.
func exitCode(cmd string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(cmd), "exit "))
	if err != nil || n < 0 || n > 255 {
		return 0
	}
	return n
}

// Logs implements runtime.Runtime: there are none.
func (Runtime) Logs(context.Context, runtime.Node, string, int64) ([]byte, bool, error) {
	return nil, false, nil
}

// Remove implements runtime.Runtime.
func (Runtime) Remove(context.Context, runtime.Node, string) error { return nil }

// Kill implements runtime.Runtime.
func (Runtime) Kill(context.Context, runtime.Node, string) error { return nil }

// List implements runtime.Runtime: there are no containers.
func (Runtime) List(context.Context, runtime.Node, string) ([]runtime.Found, error) { return nil, nil }

// Stop implements runtime.Runtime.
func (Runtime) Stop(context.Context, runtime.Node, string, time.Duration) error { return nil }

type container struct {
	at   time.Time
	code int
}

func (c container) ID() string           { return "bench-noop" }
func (c container) StartedAt() time.Time { return c.at }
func (c container) Wait(context.Context) (runtime.Exit, error) {
	return runtime.Exit{Code: c.code, StartedAt: c.at, FinishedAt: c.at}, nil
}
