package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/events"
)

// The test binary doubles as the program: with SUBSCRIBER_TEST_MAIN=1 it
// runs it, so the tests below start, kill and restart real processes.
// SUBSCRIBER_TEST_KILL_AFTER=N makes the process SIGKILL itself right after
// its Nth outcome is on disk, before the ack; SUBSCRIBER_TEST_NO_RESET=1
// leaves the consumer where the server has it.
func TestMain(m *testing.M) {
	if os.Getenv("SUBSCRIBER_TEST_MAIN") == "1" {
		var h hooks
		if n, err := strconv.Atoi(os.Getenv("SUBSCRIBER_TEST_KILL_AFTER")); err == nil {
			written := 0
			h.afterWrite = func(uint64) {
				if written++; written == n {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {}
				}
			}
		}
		h.noReset = os.Getenv("SUBSCRIBER_TEST_NO_RESET") == "1"
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, h))
	}
	goleak.VerifyTestMain(m)
}

type fixture struct {
	url      string
	password string // the subscriber user's
	js       jetstream.JetStream
}

// start runs a NATS server with the repository's nats.conf (so the program
// runs as the read-only subscriber user), and creates the broker's stream
// as the broker user.
func start(t *testing.T) *fixture {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join("..", "..", "nats.conf"))
	require.NoError(t, err)
	brokerPassword, subscriberPassword := rand.Text(), rand.Text()
	vars := fmt.Sprintf("BROKER_NATS_PASSWORD: %q\nBROKER_NATS_SUBSCRIBER_PASSWORD: %q\n", brokerPassword, subscriberPassword)
	opts := &server.Options{}
	require.NoError(t, opts.ProcessConfigString(vars+string(conf)))
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.StoreDir, opts.NoLog, opts.NoSigs = t.TempDir(), true, true
	srv, err := server.NewServer(opts)
	require.NoError(t, err)
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	require.True(t, srv.ReadyForConnections(10*time.Second))
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("broker", brokerPassword))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, events.Ensure(t.Context(), js, 1))
	return &fixture{url: srv.ClientURL(), password: subscriberPassword, js: js}
}

// appendTasks appends n tasks' histories: each is submitted, retried or
// reported on (events the subscriber must ignore), and ends completed,
// failed or cancelled; node events come in between. It returns the
// outcome events, in log order.
func (e *fixture) appendTasks(t *testing.T, prefix string, n int) []events.Envelope {
	t.Helper()
	var outcomes []events.Envelope
	add := func(key string, p events.Payload) events.Envelope { return e.append(t, key, p) }
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		add("task:"+id+":submitted", &events.TaskSubmitted{TaskID: id, Name: id, Image: "busybox", Cmd: "true", ExecutionType: "cpu"})
		add("node:"+id+":up", &events.NodeUp{NodeID: "n-" + id, At: time.Now()})
		var out events.Envelope
		switch i % 3 {
		case 0:
			out = add("task:"+id+":1:completed", &events.TaskCompleted{TaskID: id, Attempt: 1})
		case 1:
			code := 3
			add("task:"+id+":1:retrying", &events.TaskRetrying{TaskID: id, Attempt: 1, NextAttempt: 2, Cause: events.CauseExitCode, ExitCode: &code})
			out = add("task:"+id+":2:failed", &events.TaskFailed{TaskID: id, Attempt: 2, Cause: events.CauseExitCode, ExitCode: &code, Error: "exit 3"})
		default:
			add("task:"+id+":cancel_requested", &events.CancelRequested{TaskID: id})
			out = add("task:"+id+":0:cancelled", &events.TaskCancelled{TaskID: id})
		}
		outcomes = append(outcomes, out)
	}
	return outcomes
}

// append appends one event and returns it with its sequence.
func (e *fixture) append(t *testing.T, key string, p events.Payload) events.Envelope {
	t.Helper()
	env, err := events.New(key, p, events.Meta{Actor: "test/writer"})
	require.NoError(t, err)
	ack, err := events.Append(t.Context(), e.js, env)
	require.NoError(t, err)
	require.False(t, ack.Duplicate)
	env.Seq = ack.Seq
	return env
}

type process struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	stdout *bytes.Buffer
	done   chan struct{}
}

// program starts the subscriber as its own process.
func (e *fixture) program(t *testing.T, extraEnv []string, args ...string) *process {
	t.Helper()
	cmd := exec.CommandContext(context.WithoutCancel(t.Context()), os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SUBSCRIBER_TEST_MAIN=1", "NATS_URL="+e.url, "NATS_PASSWORD="+e.password)
	cmd.Env = append(cmd.Env, extraEnv...)
	p := &process{cmd: cmd, stderr: &bytes.Buffer{}, stdout: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	require.NoError(t, cmd.Start())
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("subscriber output:\n%s", p.stderr)
		}
	})
	return p
}

// wait waits for the process to exit and returns its status.
func (p *process) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the subscriber did not exit:\n%s", p.stderr)
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -int(ws.Signal())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *process) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	require.Equal(t, -int(syscall.SIGKILL), p.wait(t))
}

// stop stops the process gracefully and checks that it exits cleanly.
func (p *process) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, exitCompleted, p.wait(t), "a graceful stop exits 0")
}

// readOutcomes reads the output file.
func readOutcomes(t require.TestingT, path string) []outcome {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var out []outcome
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var o outcome
		require.NoError(t, json.Unmarshal(sc.Bytes(), &o))
		out = append(out, o)
	}
	return out
}

func waitLines(t *testing.T, path string, n int) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.GreaterOrEqual(c, len(readOutcomes(c, path)), n)
	}, 60*time.Second, 10*time.Millisecond)
}

// requireExactlyOnce checks that the output holds every outcome once, in
// log order, and nothing else.
func requireExactlyOnce(t *testing.T, path string, want []events.Envelope) {
	t.Helper()
	got := readOutcomes(t, path)
	gotSeqs := make([]uint64, len(got))
	for i, o := range got {
		gotSeqs[i] = o.Seq
	}
	wantSeqs := make([]uint64, len(want))
	for i, e := range want {
		wantSeqs[i] = e.Seq
	}
	require.Equal(t, wantSeqs, gotSeqs, "every outcome once, in log order")
	for i, e := range want {
		require.Equal(t, e.ID, got[i].EventID)
		require.Equal(t, e.Type, got[i].Type)
		require.Equal(t, e.AggregateID, got[i].TaskID)
		require.Equal(t, e.Type.Name(), got[i].Status)
	}
}

func TestSurvivesKills(t *testing.T) {
	t.Parallel()
	e := start(t)
	out := filepath.Join(t.TempDir(), "outcomes.jsonl")
	args := []string{"--out", out, "--durable", "survivor"}
	want := e.appendTasks(t, "a", 12)

	// Killed right after its 5th outcome is on disk, before the ack.
	p := e.program(t, []string{"SUBSCRIBER_TEST_KILL_AFTER=5"}, args...)
	require.Equal(t, -int(syscall.SIGKILL), p.wait(t))
	require.Len(t, readOutcomes(t, out), 5)

	// More outcomes arrive while it is down; it comes back and is killed
	// from outside in the middle of the stream.
	want = append(want, e.appendTasks(t, "b", 12)...)
	p = e.program(t, nil, args...)
	waitLines(t, out, 9)
	p.kill(t)

	// Killed again after its next outcome, and this time the consumer is
	// not moved back to the file at start: the event written but not acked
	// comes back after the ack wait and must be skipped by its sequence.
	want = append(want, e.appendTasks(t, "c", 6)...)
	p = e.program(t, []string{"SUBSCRIBER_TEST_KILL_AFTER=1"}, args...)
	require.Equal(t, -int(syscall.SIGKILL), p.wait(t))
	before := len(readOutcomes(t, out))
	p = e.program(t, []string{"SUBSCRIBER_TEST_NO_RESET=1"}, append(args, "--ack-wait", "1s")...)
	waitLines(t, out, len(want))
	p.stop(t)
	require.Greater(t, len(want), before)
	requireExactlyOnce(t, out, want)

	// And it carries on with what comes next, the consumer's position
	// agreeing with the file.
	want = append(want, e.appendTasks(t, "d", 6)...)
	p = e.program(t, nil, args...)
	waitLines(t, out, len(want))
	p.stop(t)
	requireExactlyOnce(t, out, want)
	info, err := e.js.Consumer(t.Context(), events.StreamName, "survivor")
	require.NoError(t, err)
	ci, err := info.Info(t.Context())
	require.NoError(t, err)
	require.Zero(t, ci.NumAckPending)
	require.Equal(t, want[len(want)-1].Seq, ci.AckFloor.Stream)
}

func TestGracefulRestart(t *testing.T) {
	t.Parallel()
	e := start(t)
	out := filepath.Join(t.TempDir(), "outcomes.jsonl")
	args := []string{"--out", out}
	want := e.appendTasks(t, "a", 30)

	// Stopped in the middle of the stream, it finishes the event in hand.
	p := e.program(t, nil, args...)
	waitLines(t, out, 3)
	p.stop(t)
	got := len(readOutcomes(t, out))
	require.Less(t, got, len(want), "stopped before the end")

	want = append(want, e.appendTasks(t, "b", 6)...)
	p = e.program(t, nil, args...)
	waitLines(t, out, len(want))
	p.stop(t)
	requireExactlyOnce(t, out, want)
}

func TestTornLastLine(t *testing.T) {
	t.Parallel()
	e := start(t)
	out := filepath.Join(t.TempDir(), "outcomes.jsonl")
	want := e.appendTasks(t, "a", 6)
	p := e.program(t, []string{"SUBSCRIBER_TEST_KILL_AFTER=2"}, "--out", out)
	require.Equal(t, -int(syscall.SIGKILL), p.wait(t))

	// A crash in the middle of a write leaves half a line, never acked.
	f, err := os.OpenFile(out, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"seq":99,"event_id":"01K`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	p = e.program(t, nil, "--out", out)
	waitLines(t, out, len(want))
	p.stop(t)
	requireExactlyOnce(t, out, want)
}

func TestWaitForTask(t *testing.T) {
	t.Parallel()
	e := start(t)
	done := e.appendTasks(t, "done", 3) // completed, failed, cancelled

	for i, status := range []int{exitCompleted, exitFailed, exitCancelled} {
		p := e.program(t, nil, "--task", done[i].AggregateID)
		require.Equal(t, status, p.wait(t), "a task that has ended: at once")
		var o outcome
		require.NoError(t, json.Unmarshal(p.stdout.Bytes(), &o))
		require.Equal(t, done[i].Seq, o.Seq)
	}

	// A task that ends later.
	e.append(t, "task:later:submitted", &events.TaskSubmitted{TaskID: "later", Name: "later", Image: "busybox", Cmd: "true", ExecutionType: "cpu"})
	p := e.program(t, nil, "--task", "later")
	completed := e.append(t, "task:later:1:completed", &events.TaskCompleted{TaskID: "later", Attempt: 1})
	require.Equal(t, exitCompleted, p.wait(t))
	var o outcome
	require.NoError(t, json.Unmarshal(p.stdout.Bytes(), &o))
	require.Equal(t, completed.Seq, o.Seq)

	// A forced retry reopens a failed task: the old outcome no longer counts.
	e.append(t, "task:done-1:retry_requested", &events.RetryRequested{TaskID: "done-1"})
	p = e.program(t, nil, "--task", "done-1")
	completed = e.append(t, "task:done-1:3:completed", &events.TaskCompleted{TaskID: "done-1", Attempt: 3})
	require.Equal(t, exitCompleted, p.wait(t))
	require.NoError(t, json.Unmarshal(p.stdout.Bytes(), &o))
	require.Equal(t, completed.Seq, o.Seq)

	// An unknown task: nothing comes.
	require.Equal(t, exitError, e.program(t, nil, "--task", "nope", "--timeout", "300ms").wait(t))
}

func TestUsage(t *testing.T) {
	t.Parallel()
	require.Equal(t, exitUsage, run([]string{"extra"}, &bytes.Buffer{}, &bytes.Buffer{}, hooks{}))
	require.Equal(t, exitUsage, run([]string{"--password", "a", "--password-file", "b"}, &bytes.Buffer{}, &bytes.Buffer{}, hooks{}))
}
