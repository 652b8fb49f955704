// Package docker is the runtime that runs task containers on a node through
// nothing but its Docker Engine HTTP API.
package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/cbroker/broker/services/runtime"
)

// Address is where a node's Docker API is.
type Address struct {
	// Host is what the Docker client dials: tcp://host:port or unix:///path.
	Host string
	// TLS is set for https:// nodes: the broker authenticates with its client
	// certificate (Config.CertPath) and verifies the node's.
	TLS bool
}

// ParseHost turns a node hostname into the address the Docker client dials.
// Accepted forms: the seed's http://host:port, tcp://host:port,
// unix:///path/to/docker.sock, and https://host:port (usually 2376) for an
// engine that requires TLS client certificates.
func ParseHost(hostname string) (Address, error) {
	u, err := url.Parse(hostname)
	if err != nil {
		return Address{}, fmt.Errorf("invalid Docker address %q: %w", hostname, err)
	}
	switch u.Scheme {
	case "unix":
		if u.Path == "" || u.Host != "" {
			return Address{}, fmt.Errorf("invalid Docker address %q: want unix:///path/to/docker.sock", hostname)
		}
		return Address{Host: "unix://" + u.Path}, nil
	case "tcp", "http", "https":
		if u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" {
			return Address{}, fmt.Errorf("invalid Docker address %q: want %s://host:port", hostname, u.Scheme)
		}
		return Address{Host: "tcp://" + u.Host, TLS: u.Scheme == "https"}, nil
	default:
		return Address{}, fmt.Errorf("unsupported Docker address %q: use http://host:port, tcp://host:port, https://host:port (TLS) or unix:///path", hostname)
	}
}

// Config configures the Docker runtime.
type Config struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// PullTimeout bounds an image pull. Defaults to 10 minutes.
	PullTimeout time.Duration
	// StartTimeout bounds the creation and start of a container (not the
	// pull): a node that hangs fails the attempt instead of leaving it
	// starting for ever. Defaults to 2 minutes.
	StartTimeout time.Duration
	// CertPath is a directory in Docker's DOCKER_CERT_PATH layout (ca.pem,
	// cert.pem, key.pem): the CA that signed the nodes' certificates and the
	// broker's client certificate, for https:// nodes.
	CertPath string
}

// Runtime implements runtime.Runtime over the Docker Engine API. It keeps one
// client per node address.
type Runtime struct {
	cfg     Config
	log     *slog.Logger
	mu      sync.Mutex
	clients map[string]*client.Client
}

// New returns a Docker runtime.
func New(cfg Config) *Runtime {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PullTimeout <= 0 {
		cfg.PullTimeout = 10 * time.Minute
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	return &Runtime{cfg: cfg, log: cfg.Logger.With(slog.String("component", "docker")), clients: map[string]*client.Client{}}
}

var _ runtime.Runtime = (*Runtime)(nil)

// Close closes every client.
func (r *Runtime) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for h, c := range r.clients {
		errs = append(errs, c.Close())
		delete(r.clients, h)
	}
	return errors.Join(errs...)
}

// Supports implements runtime.Runtime.
func (r *Runtime) Supports(hostname string) bool {
	_, err := ParseHost(hostname)
	return err == nil
}

// Client returns the Docker client of a node address, its API version
// negotiated. Negotiating eagerly, once, matters: the client negotiates
// lazily on a first request otherwise, and some of its calls
// (ContainerList) read the version without waiting for that, a data race
// when calls run concurrently. A client whose node does not answer is not
// kept.
func (r *Runtime) Client(ctx context.Context, hostname string) (*client.Client, error) {
	addr, err := ParseHost(hostname)
	if err != nil {
		return nil, err
	}
	key := hostname // https and tcp to the same host:port are different clients
	r.mu.Lock()
	c, ok := r.clients[key]
	r.mu.Unlock()
	if ok {
		return c, nil
	}
	opts := []client.Opt{client.WithHost(addr.Host), client.WithAPIVersionNegotiation()}
	if addr.TLS {
		if r.cfg.CertPath == "" {
			return nil, fmt.Errorf("node %s uses TLS, but the broker has no client certificate (--docker-cert-path)", hostname)
		}
		opts = append(opts, client.WithTLSClientConfig(
			filepath.Join(r.cfg.CertPath, "ca.pem"), filepath.Join(r.cfg.CertPath, "cert.pem"), filepath.Join(r.cfg.CertPath, "key.pem")))
	}
	c, err = client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", hostname, err)
	}
	// Negotiate outside the lock: a node that does not answer must not hold
	// up the others.
	ping, err := c.Ping(ctx)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	c.NegotiateAPIVersionPing(ping)
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, ok := r.clients[key]; ok { // another goroutine was faster
		_ = c.Close()
		return other, nil
	}
	r.clients[key] = c
	return c, nil
}

// Ping implements runtime.Runtime.
func (r *Runtime) Ping(ctx context.Context, node runtime.Node) error {
	cli, err := r.Client(ctx, node.Hostname)
	if err != nil {
		return err
	}
	_, err = cli.Ping(ctx)
	return err
}

// Start implements runtime.Runtime.
func (r *Runtime) Start(ctx context.Context, node runtime.Node, spec runtime.Spec) (runtime.Container, error) {
	cli, err := r.Client(ctx, node.Hostname)
	if err != nil {
		return nil, &runtime.StartError{Msg: err.Error(), NodeFault: true}
	}
	if err := r.ensureImage(ctx, cli, spec.Image); err != nil {
		return nil, err
	}
	cfg := &container.Config{
		Image:      spec.Image,
		Entrypoint: []string{"sh", "-c", spec.Cmd},
		Labels:     spec.Labels,
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.StartTimeout)
	defer cancel()
	for {
		created, err := cli.ContainerCreate(cctx, cfg, &container.HostConfig{Binds: spec.Binds}, nil, nil, spec.Name)
		if cerrdefs.IsConflict(err) {
			// The attempt was created before (a restart, or another runner
			// in a split brain): adopt that container.
			c, err := r.attach(ctx, cli, spec, true)
			if !errors.Is(err, runtime.ErrNotFound) {
				return c, err
			}
			// The name is taken by a create still under way (or one that
			// failed and freed it): look again shortly.
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-cctx.Done():
				return nil, startError("creating container "+spec.Name, cctx.Err())
			}
		}
		if err != nil {
			return nil, startError(fmt.Sprintf("creating container %s from image %s", spec.Name, spec.Image), err)
		}
		return r.start(ctx, cli, created.ID, spec.Name)
	}
}

// start registers the wait for the container's exit, then starts it, so that
// a fast exit is not missed. ctx bounds the wait; the start itself is
// bounded by StartTimeout.
func (r *Runtime) start(ctx context.Context, cli *client.Client, id, name string) (runtime.Container, error) {
	waited := wait(ctx, cli, id, container.WaitConditionNextExit)
	sctx, cancel := context.WithTimeout(ctx, r.cfg.StartTimeout)
	defer cancel()
	if err := cli.ContainerStart(sctx, id, container.StartOptions{}); err != nil {
		return nil, startError("starting container "+name, err)
	}
	info, err := cli.ContainerInspect(sctx, id)
	if err != nil {
		return nil, startError("inspecting container "+name, err)
	}
	return &handle{cli: cli, id: id, started: parseTime(info.State.StartedAt), waited: waited}, nil
}

type waitResult struct {
	resp container.WaitResponse
	err  error
}

// wait registers a wait for the container and delivers its one result on a
// buffered channel, so that no goroutine is left blocked when nobody reads
// it. The ctx bounds the wait.
func wait(ctx context.Context, cli *client.Client, id string, cond container.WaitCondition) <-chan waitResult {
	out := make(chan waitResult, 1)
	waitC, errC := cli.ContainerWait(ctx, id, cond)
	go func() {
		select {
		case resp := <-waitC:
			out <- waitResult{resp: resp}
		case err := <-errC:
			out <- waitResult{err: err}
		}
	}()
	return out
}

func (r *Runtime) ensureImage(ctx context.Context, cli *client.Client, ref string) error {
	_, err := cli.ImageInspect(ctx, ref)
	if err == nil {
		return nil
	}
	if !cerrdefs.IsNotFound(err) {
		return startError("inspecting image "+ref, err)
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PullTimeout)
	defer cancel()
	rc, err := cli.ImagePull(pctx, ref, image.PullOptions{})
	if err != nil {
		return startError(fmt.Sprintf("image %s is not on the node and pulling it failed", ref), err)
	}
	defer rc.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil); err != nil {
		return startError(fmt.Sprintf("image %s is not on the node and pulling it failed", ref), err)
	}
	r.log.InfoContext(ctx, "image pulled", slog.String("image", ref))
	return nil
}

// startError classifies a Docker error: connection problems are the node's
// fault, everything else the task's.
func startError(what string, err error) error {
	return &runtime.StartError{Msg: what + ": " + err.Error(), NodeFault: client.IsErrConnectionFailed(err) || errors.Is(err, context.DeadlineExceeded)}
}

// Attach implements runtime.Runtime.
func (r *Runtime) Attach(ctx context.Context, node runtime.Node, spec runtime.Spec) (runtime.Container, error) {
	cli, err := r.Client(ctx, node.Hostname)
	if err != nil {
		return nil, err
	}
	return r.attach(ctx, cli, spec, false)
}

func (r *Runtime) attach(ctx context.Context, cli *client.Client, spec runtime.Spec, startCreated bool) (runtime.Container, error) {
	info, err := cli.ContainerInspect(ctx, spec.Name)
	if cerrdefs.IsNotFound(err) {
		return nil, runtime.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting container %s: %w", spec.Name, err)
	}
	if info.Config == nil || info.Config.Labels[runtime.LabelTask] != spec.TaskID {
		return nil, &runtime.StartError{Msg: fmt.Sprintf("a container named %s exists that the broker did not create for task %s", spec.Name, spec.TaskID)}
	}
	switch info.State.Status {
	case "created":
		if startCreated {
			return r.start(ctx, cli, info.ID, spec.Name)
		}
		return &handle{cli: cli, id: info.ID, exit: &runtime.Exit{Code: -1, Error: "container was created but never started"}}, nil
	case "exited", "dead":
		exit := exitOf(info)
		return &handle{cli: cli, id: info.ID, started: exit.StartedAt, exit: &exit}, nil
	default:
		waited := wait(ctx, cli, info.ID, container.WaitConditionNotRunning)
		return &handle{cli: cli, id: info.ID, started: parseTime(info.State.StartedAt), waited: waited}, nil
	}
}

// Logs implements runtime.Runtime.
func (r *Runtime) Logs(ctx context.Context, node runtime.Node, name string, limit int64) ([]byte, bool, error) {
	cli, err := r.Client(ctx, node.Hostname)
	if err != nil {
		return nil, false, err
	}
	rc, err := cli.ContainerLogs(ctx, name, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if cerrdefs.IsNotFound(err) {
		return nil, false, runtime.ErrNotFound
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading logs of %s: %w", name, err)
	}
	defer rc.Close()
	w := &capWriter{limit: limit}
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil {
		return nil, false, fmt.Errorf("reading logs of %s: %w", name, err)
	}
	return w.buf.Bytes(), w.truncated, nil
}

// withOwned runs act on a container of the node that carries the broker's
// label: a missing container is nothing to do, one without the label is
// refused. Not-found errors of act (the container went in between) and the
// errors ignore accepts are not errors.
func (r *Runtime) withOwned(ctx context.Context, node runtime.Node, name, action string,
	act func(cli *client.Client, id string) error, ignore func(error) bool,
) error {
	cli, err := r.Client(ctx, node.Hostname)
	if err != nil {
		return err
	}
	info, err := cli.ContainerInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspecting container %s: %w", name, err)
	}
	if info.Config == nil || info.Config.Labels[runtime.LabelBroker] == "" {
		return fmt.Errorf("refusing to %s container %s: it does not carry the broker's labels", action, name)
	}
	if err := act(cli, info.ID); err != nil && !cerrdefs.IsNotFound(err) && (ignore == nil || !ignore(err)) {
		return fmt.Errorf("%s container %s: %w", action, name, err)
	}
	return nil
}

// Remove implements runtime.Runtime. It only removes containers that carry
// the broker's label.
func (r *Runtime) Remove(ctx context.Context, node runtime.Node, name string) error {
	return r.withOwned(ctx, node, name, "remove", func(cli *client.Client, id string) error {
		return cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
	}, nil)
}

// Kill implements runtime.Runtime, for containers that carry the broker's
// label.
func (r *Runtime) Kill(ctx context.Context, node runtime.Node, name string) error {
	return r.withOwned(ctx, node, name, "kill", func(cli *client.Client, id string) error {
		return cli.ContainerKill(ctx, id, "KILL")
	}, cerrdefs.IsConflict) // conflict: it does not run
}

// Stop implements runtime.Runtime, for containers that carry the broker's
// label.
func (r *Runtime) Stop(ctx context.Context, node runtime.Node, name string, grace time.Duration) error {
	secs := max(int(grace/time.Second), 0)
	return r.withOwned(ctx, node, name, "stop", func(cli *client.Client, id string) error {
		return cli.ContainerStop(ctx, id, container.StopOptions{Signal: "TERM", Timeout: &secs})
	}, nil)
}

// List implements runtime.Runtime.
func (r *Runtime) List(ctx context.Context, node runtime.Node, brokerID string) ([]runtime.Found, error) {
	cli, err := r.Client(ctx, node.Hostname)
	if err != nil {
		return nil, err
	}
	list, err := cli.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", runtime.LabelBroker+"="+brokerID)),
	})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	found := make([]runtime.Found, 0, len(list))
	for _, c := range list {
		f := runtime.Found{TaskID: c.Labels[runtime.LabelTask], Running: c.State == "running" || c.State == "restarting" || c.State == "paused"}
		f.Attempt, _ = strconv.Atoi(c.Labels[runtime.LabelAttempt])
		if len(c.Names) > 0 {
			f.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		if !f.Running {
			if info, err := cli.ContainerInspect(ctx, c.ID); err == nil {
				f.ExitCode = info.State.ExitCode
			}
		}
		found = append(found, f)
	}
	return found, nil
}

type handle struct {
	cli     *client.Client
	id      string
	started time.Time
	waited  <-chan waitResult
	exit    *runtime.Exit // set when the container had already exited
}

func (h *handle) ID() string           { return h.id }
func (h *handle) StartedAt() time.Time { return h.started }

func (h *handle) Wait(ctx context.Context) (runtime.Exit, error) {
	if h.exit != nil {
		return *h.exit, nil
	}
	var resp container.WaitResponse
	select {
	case w := <-h.waited:
		if w.err != nil {
			return runtime.Exit{}, fmt.Errorf("waiting for container %s: %w", h.id, w.err)
		}
		resp = w.resp
	case <-ctx.Done():
		return runtime.Exit{}, ctx.Err()
	}
	info, err := h.cli.ContainerInspect(ctx, h.id)
	if err != nil {
		exit := runtime.Exit{Code: int(resp.StatusCode), StartedAt: h.started, FinishedAt: time.Now(), Vanished: cerrdefs.IsNotFound(err)}
		if resp.Error != nil {
			exit.Error = resp.Error.Message
		}
		return exit, nil
	}
	return exitOf(info), nil
}

func exitOf(info container.InspectResponse) runtime.Exit {
	exit := runtime.Exit{
		Code:       info.State.ExitCode,
		OOMKilled:  info.State.OOMKilled,
		Error:      info.State.Error,
		StartedAt:  parseTime(info.State.StartedAt),
		FinishedAt: parseTime(info.State.FinishedAt),
	}
	// Docker stamps StartedAt after the start returns, so a process that
	// ends at once can show a FinishedAt before it; it ran for no time.
	if !exit.FinishedAt.IsZero() && exit.FinishedAt.Before(exit.StartedAt) {
		exit.FinishedAt = exit.StartedAt
	}
	return exit
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t.UTC()
}

// capWriter keeps the first limit bytes written to it and counts the rest.
type capWriter struct {
	buf       bytes.Buffer
	limit     int64
	truncated bool
}

func (w *capWriter) Write(p []byte) (int, error) {
	room := w.limit - int64(w.buf.Len())
	switch {
	case room <= 0:
		w.truncated = w.truncated || len(p) > 0
	case int64(len(p)) > room:
		w.buf.Write(p[:room])
		w.truncated = true
	default:
		w.buf.Write(p)
	}
	return len(p), nil
}
