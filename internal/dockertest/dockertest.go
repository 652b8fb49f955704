// Package dockertest gives tests the real Docker engines the test setup
// started (scripts/engines.sh) and cleans up after them.
//
// The engines are listed in CB_TEST_DOCKER_HOSTS, comma-separated, as node
// hostnames (unix:///..., tcp://...). Without them a test is skipped, except
// when CI=true: then it fails, so a CI run without Docker is never green.
package dockertest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// EnvHosts names the variable listing the test engines.
const EnvHosts = "CB_TEST_DOCKER_HOSTS"

// Image is the local test image every engine has: FROM scratch plus the
// static busybox, built by the test setup. Tests never pull.
const Image = "cb-test/busybox:latest"

// Labels the broker puts on its containers (services/runtime); dockertest
// removes the containers of a test's broker id when the test ends.
const (
	LabelBroker = "io.cbroker.broker"
	LabelTask   = "io.cbroker.task"
)

// Engine is one Docker engine for tests.
type Engine struct {
	// Hostname is the engine's address in node form.
	Hostname string
	Client   *client.Client
}

// Engines returns at least n test engines, checked with a ping, or skips the
// test (fails it when CI=true).
func Engines(t testing.TB, n int) []Engine {
	t.Helper()
	var hosts []string
	for h := range strings.SplitSeq(os.Getenv(EnvHosts), ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) < n {
		unavailable(t, "%s lists %d Docker engines, the test needs %d; run scripts/engines.sh", EnvHosts, len(hosts), n)
	}
	engines := make([]Engine, 0, n)
	for _, h := range hosts[:n] {
		cli, err := client.NewClientWithOpts(client.WithHost(strings.Replace(h, "http://", "tcp://", 1)), client.WithAPIVersionNegotiation())
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err = cli.Ping(ctx)
			cancel()
		}
		if err != nil {
			unavailable(t, "Docker engine %s: %v", h, err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		engines = append(engines, Engine{Hostname: h, Client: cli})
	}
	return engines
}

func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("Docker is required in CI: "+format, args...)
	}
	t.Skipf("Docker not available: "+format, args...)
}

// CleanupBroker removes, when the test ends, every container on the engines
// labelled with the broker id.
func CleanupBroker(t testing.TB, engines []Engine, brokerID string) {
	t.Helper()
	t.Cleanup(func() {
		for _, e := range engines {
			for _, c := range Containers(t, e, brokerID) {
				_ = e.Client.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
			}
		}
	})
}

// Containers lists all containers, running or not, labelled with the broker id.
func Containers(t testing.TB, e Engine, brokerID string) []container.Summary {
	t.Helper()
	return list(t, e, LabelBroker+"="+brokerID)
}

// TaskContainers lists all containers, running or not, of a task.
func TaskContainers(t testing.TB, e Engine, taskID string) []container.Summary {
	t.Helper()
	return list(t, e, LabelTask+"="+taskID)
}

func list(t testing.TB, e Engine, label string) []container.Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := e.Client.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", label))})
	if err != nil {
		t.Errorf("listing containers on %s: %v", e.Hostname, err)
	}
	return list
}
