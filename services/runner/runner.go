// Package runner holds the runner: the actor that turns accepted
// reservations into containers on nodes and reports what happens to them.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/runtime"
)

// DefaultLogLimit is the default cap of archived logs per attempt.
const DefaultLogLimit = 64 << 20

// Config configures a Runner.
type Config struct {
	// Replica is the process's fold. Required.
	Replica *projections.Replica
	// Writer appends the runner's reports. Required.
	Writer *actor.Writer
	// JetStream holds the log object store. Required.
	JetStream jetstream.JetStream
	// Runtimes run the containers; the first that supports a node's hostname
	// is used. Required.
	Runtimes runtime.Set
	// BrokerID is written into every container's labels. Required.
	BrokerID string
	// Mounts maps the storage mount names tasks may use to host paths.
	Mounts map[string]string
	// LogLimit caps the archived logs of one attempt. Defaults to
	// DefaultLogLimit.
	LogLimit int64
	// Owns reports whether this runner is responsible for a node. Nil means
	// every node. When a node stops being owned, the runner stops following
	// its containers (without touching them): their new owner adopts them.
	Owns func(nodeID string) bool
	// OwnerChanged returns a channel closed at the next change of the owned
	// nodes. Optional.
	OwnerChanged func() <-chan struct{}
	// RetryDelay is the pause before retrying a failed Docker call. Defaults
	// to 1s.
	RetryDelay time.Duration
	// FinishTimeout bounds the work after a container exited (archive,
	// report, remove), which goes on after a stop signal. Defaults to 30s.
	FinishTimeout time.Duration
	// StopGrace is how long a cancelled (or timed out) task's container has
	// between SIGTERM and SIGKILL. Defaults to 10s.
	StopGrace time.Duration
	// ReconcileInterval is how often every owned node's containers are
	// compared with the fold (also at start and whenever a node comes
	// back). Defaults to 30s.
	ReconcileInterval time.Duration
	// ClaimTimeout is how long another runner's claim on an attempt may go
	// unanswered (no start, no start failure) before this runner, owning the
	// node, takes the attempt over. A claim made before this runner owned
	// the node is taken over at once. Defaults to 15 minutes, longer than an
	// image pull and a container start may take.
	ClaimTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// errNotClaimed ends an attempt's goroutine whose claim the fold did not
// accept: another runner creates the container.
var errNotClaimed = errors.New("attempt claimed by another runner")

// Runner starts a container for every reservation the fold accepted on a
// node it owns, waits for it, archives its logs, reports its exit and removes
// it. It creates a container only after the fold accepted its claim on the
// attempt (task.attempt_claimed), so two runners that both believe they own
// a node never both create one: the second create could otherwise come
// after the first container ran and was removed. After a restart it picks
// up where it stopped: a reservation whose container exists is adopted (the
// create hits a name conflict), a running container is waited for again, an
// exited one is reported.
type Runner struct {
	cfg Config
	log *slog.Logger
	obs jetstream.ObjectStore

	mu          sync.Mutex
	attempts    map[attemptKey]bool               // in flight; true once its goroutine ended
	cancels     map[attemptKey]attemptCancel      // in-flight attempts' cancellation
	signalled   map[attemptKey]bool               // kill or stop sent to the attempt's container
	nodes       map[string]projections.NodeStatus // last status seen per owned node
	ownedSince  map[string]uint64                 // per owned node, the fold's sequence when it was first seen owned
	foreign     map[attemptKey]time.Time          // starting attempts claimed by another runner: when first seen
	reconciling map[string]bool                   // node ids with a reconciliation under way
}

// signal is a kill (the seed's kill_container) or a stop (a cancel) for a
// running attempt's container.
type signal struct {
	key  attemptKey
	node runtime.Node
	name string
	kill bool
}

type attemptKey struct {
	task    string
	attempt int
}

// attemptCancel stops following one attempt when its node is given up.
type attemptCancel struct {
	node   string
	cancel context.CancelFunc
}

// job is one attempt to run or adopt, copied out of the fold.
type job struct {
	key         attemptKey
	node        runtime.Node
	spec        runtime.Spec
	adopt       bool   // the container was started before
	claimed     bool   // the fold has this runner's claim on the attempt already
	supersedes  string // the claimant this runner's claim replaces
	claimSeq    uint64 // the attempt's ClaimSeq when the job was made: names this claim's key
	specErr     error  // the spec cannot be built (unknown mount)
	correlation string
	causation   string
}

// New returns a runner.
func New(cfg Config) (*Runner, error) {
	var problems []error
	if cfg.Replica == nil || cfg.Writer == nil || cfg.JetStream == nil {
		problems = append(problems, errors.New("replica, writer and JetStream are required"))
	}
	if len(cfg.Runtimes) == 0 {
		problems = append(problems, errors.New("at least one runtime is required"))
	}
	if cfg.BrokerID == "" {
		problems = append(problems, errors.New("BrokerID is required"))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("invalid runner config: %w", err)
	}
	if cfg.LogLimit <= 0 {
		cfg.LogLimit = DefaultLogLimit
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	if cfg.FinishTimeout <= 0 {
		cfg.FinishTimeout = 30 * time.Second
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = 30 * time.Second
	}
	if cfg.ClaimTimeout <= 0 {
		cfg.ClaimTimeout = 15 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Runner{
		cfg: cfg, log: cfg.Logger.With(slog.String("component", "runner")),
		attempts: map[attemptKey]bool{}, signalled: map[attemptKey]bool{}, cancels: map[attemptKey]attemptCancel{},
		nodes: map[string]projections.NodeStatus{}, reconciling: map[string]bool{},
		ownedSince: map[string]uint64{}, foreign: map[attemptKey]time.Time{},
	}, nil
}

// Run runs attempts until ctx is done, then waits for its goroutines.
// Containers keep running when the runner stops; the next runner adopts them.
func (r *Runner) Run(ctx context.Context) error {
	select {
	case <-r.cfg.Replica.Ready():
	case <-ctx.Done():
		return nil
	}
	err := events.Retry(ctx, r.log, "opening log store", r.cfg.RetryDelay, func(ctx context.Context) error {
		obs, err := r.cfg.JetStream.ObjectStore(ctx, events.ObjectStoreLogs)
		r.obs = obs
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("opening log store: %w", err)
	}
	r.log.InfoContext(ctx, "runner started")
	var wg sync.WaitGroup
	defer wg.Wait()
	ticker := time.NewTicker(r.cfg.ReconcileInterval)
	defer ticker.Stop()
	all := false // reconcile every owned node, not only those that came back
	for {
		changed := r.cfg.Replica.Changed()
		var ownerChanged <-chan struct{}
		if r.cfg.OwnerChanged != nil {
			ownerChanged = r.cfg.OwnerChanged()
		}
		jobs, signals, nodes := r.collect(all)
		all = false
		for _, j := range jobs {
			jctx, cancel := context.WithCancel(ctx)
			r.mu.Lock()
			r.cancels[j.key] = attemptCancel{node: j.node.ID, cancel: cancel}
			r.mu.Unlock()
			wg.Go(func() {
				defer cancel()
				err := r.run(jctx, j)
				givenUp := jctx.Err() != nil && ctx.Err() == nil
				if givenUp {
					r.withdraw(ctx, j)
				}
				r.mu.Lock()
				defer r.mu.Unlock()
				delete(r.cancels, j.key)
				if givenUp || errors.Is(err, errNotClaimed) {
					// Its node was given up: a later owner (maybe this
					// runner again) adopts the attempt. Or another runner
					// claimed it: look again at the next change, where the
					// claimant's start is followed like any other and its
					// silence taken over.
					delete(r.attempts, j.key)
					return
				}
				r.attempts[j.key] = true
			})
		}
		for _, s := range signals {
			wg.Go(func() { r.signal(ctx, s) })
		}
		for _, n := range nodes {
			wg.Go(func() {
				r.reconcile(ctx, n)
				r.mu.Lock()
				delete(r.reconciling, n.ID)
				r.mu.Unlock()
			})
		}
		select {
		case <-changed:
		case <-ownerChanged:
		case <-ticker.C:
			all = true
		case <-ctx.Done():
			return nil
		}
	}
}

// collect returns the active attempts on owned nodes that have no goroutine
// yet, the kills and stops the fold asks for, and the owned nodes to
// reconcile: those that just became available (at start: all), or all when
// all is set. It forgets attempts the fold has moved past.
func (r *Runner) collect(all bool) ([]job, []signal, []runtime.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var (
		jobs    []job
		signals []signal
		nodes   []runtime.Node
	)
	r.cfg.Replica.Read(func(s *projections.State) {
		for id, n := range s.Nodes {
			if r.cfg.Owns != nil && !r.cfg.Owns(id) {
				delete(r.nodes, id) // reconciled again if it comes back
				continue
			}
			prev, seen := r.nodes[id]
			if !seen {
				r.ownedSince[id] = s.Seq
			}
			r.nodes[id] = n.Status
			back := n.Status == projections.NodeAvailable && (!seen || prev != projections.NodeAvailable)
			if (back || (all && n.Status == projections.NodeAvailable)) && !r.reconciling[id] {
				r.reconciling[id] = true
				nodes = append(nodes, runtime.Node{ID: n.ID, Hostname: n.Hostname})
			}
		}
		for id := range r.nodes {
			if _, ok := s.Nodes[id]; !ok {
				delete(r.nodes, id)
			}
		}
		for id := range r.ownedSince {
			if _, ok := r.nodes[id]; !ok {
				delete(r.ownedSince, id)
			}
		}
		gone := func(key attemptKey) bool {
			t := s.Tasks[key.task]
			return t == nil || t.Attempt != key.attempt || !t.Active()
		}
		for key, done := range r.attempts {
			if done && gone(key) {
				delete(r.attempts, key)
			}
		}
		for key := range r.signalled {
			if gone(key) {
				delete(r.signalled, key)
			}
		}
		for key := range r.foreign {
			if t := s.Tasks[key.task]; gone(key) || t.Status != projections.TaskStarting {
				delete(r.foreign, key)
			}
		}
		for key, c := range r.cancels {
			if r.cfg.Owns != nil && !r.cfg.Owns(c.node) {
				c.cancel() // stop following, never kill: the new owner adopts it
				delete(r.signalled, key)
			}
		}
		for _, t := range s.ActiveTasks() {
			n := s.Nodes[t.NodeID]
			if n == nil || (r.cfg.Owns != nil && !r.cfg.Owns(t.NodeID)) {
				continue
			}
			key := attemptKey{t.ID, t.Attempt}
			if _, ok := r.attempts[key]; !ok {
				if supersedes, ok := r.mayClaim(t, key); ok {
					r.attempts[key] = false
					j := r.newJob(t, n)
					j.supersedes = supersedes
					jobs = append(jobs, j)
				}
			}
			// A client's kill is a SIGKILL; a cancel or a timeout stops
			// gracefully.
			requested := t.KillRequested == t.Attempt || t.CancelRequested
			kill := t.KillRequested == t.Attempt && t.KillCause != events.CauseTimeout
			if requested && t.Status == projections.TaskStarted && !r.signalled[key] {
				r.signalled[key] = true
				signals = append(signals, signal{key: key, node: runtime.Node{ID: n.ID, Hostname: n.Hostname}, name: t.ContainerName, kill: kill})
			}
		}
	})
	return jobs, signals, nodes
}

// mayClaim decides whether this runner may take a starting attempt of a
// node it owns: one nobody claimed, its own, or one whose claimant it
// supersedes (returned): a claim made before this runner owned the node, or
// one left unanswered for ClaimTimeout. Attempts already started are
// always followed. The caller holds r.mu and the replica's read lock.
func (r *Runner) mayClaim(t *projections.Task, key attemptKey) (supersedes string, ok bool) {
	if t.Status != projections.TaskStarting || t.Claim == "" || t.Claim == r.cfg.Writer.Actor {
		return "", true
	}
	if t.ClaimSeq <= r.ownedSince[t.NodeID] {
		return t.Claim, true
	}
	first, seen := r.foreign[key]
	if !seen {
		r.foreign[key] = time.Now()
		return "", false
	}
	if time.Since(first) < r.cfg.ClaimTimeout {
		return "", false
	}
	r.log.Warn("taking over an unanswered claim", slog.String("task_id", key.task), slog.Int("attempt", key.attempt),
		slog.String("claimant", t.Claim), slog.Duration("unanswered_for", time.Since(first)))
	return t.Claim, true
}

// signal kills or stops an attempt's container; its exit is then reported
// by the attempt's goroutine like any other.
func (r *Runner) signal(ctx context.Context, s signal) {
	rt, ok := r.cfg.Runtimes.For(s.node.Hostname)
	if !ok {
		return
	}
	var err error
	if s.kill {
		err = rt.Kill(ctx, s.node, s.name)
	} else {
		err = rt.Stop(ctx, s.node, s.name, r.cfg.StopGrace)
	}
	if err != nil && ctx.Err() == nil {
		r.log.WarnContext(ctx, "signalling container", slog.String("container", s.name), slog.Bool("kill", s.kill), slog.Any("error", err))
	}
}

func (r *Runner) newJob(t *projections.Task, n *projections.Node) job {
	j := job{
		key:  attemptKey{t.ID, t.Attempt},
		node: runtime.Node{ID: n.ID, Hostname: n.Hostname},
		spec: runtime.Spec{
			TaskID: t.ID, Attempt: t.Attempt, Name: t.ContainerName, Image: t.Image, Cmd: t.Cmd,
			Labels: map[string]string{
				runtime.LabelBroker:  r.cfg.BrokerID,
				runtime.LabelTask:    t.ID,
				runtime.LabelAttempt: strconv.Itoa(t.Attempt),
			},
		},
		adopt:       t.Status == projections.TaskStarted,
		claimed:     t.Claim == r.cfg.Writer.Actor,
		claimSeq:    t.ClaimSeq,
		correlation: t.CorrelationID,
		causation:   t.LastEventID,
	}
	for _, name := range slices.Sorted(maps.Keys(t.StorageMounts)) {
		host, ok := n.Mounts[name] // the node's own path wins
		if !ok {
			host, ok = r.cfg.Mounts[name]
		}
		if !ok {
			j.specErr = fmt.Errorf("storage mount %q is not configured", name)
			break
		}
		j.spec.Binds = append(j.spec.Binds, host+":"+t.StorageMounts[name])
	}
	return j
}

// current reports whether the fold still has the attempt running.
func (r *Runner) current(key attemptKey) bool {
	ok := false
	r.cfg.Replica.Read(func(s *projections.State) {
		t := s.Tasks[key.task]
		ok = t != nil && t.Attempt == key.attempt && t.Active()
	})
	return ok
}

func (r *Runner) propose(ctx context.Context, j job, p events.Payload) error {
	_, err := r.cfg.Writer.Propose(ctx, actor.Proposal{
		Key:     actor.TaskKey(j.key.task, j.key.attempt, p.EventType()),
		Payload: p, CorrelationID: j.correlation, CausationID: j.causation,
	})
	return err
}

// run follows one attempt to its end. It returns errNotClaimed when another
// runner's claim on the attempt won.
func (r *Runner) run(ctx context.Context, j job) error {
	log := r.log.With(slog.String("task_id", j.key.task), slog.Int("attempt", j.key.attempt), slog.String("node_id", j.node.ID))
	rt, ok := r.cfg.Runtimes.For(j.node.Hostname)
	if !ok {
		j.specErr = fmt.Errorf("no runtime can run containers on %s", j.node.Hostname)
	}
	var (
		c   runtime.Container
		err error
	)
	if j.adopt {
		c, err = r.attach(ctx, rt, j)
	} else {
		if err := r.claim(ctx, j, log); err != nil {
			return err
		}
		c, err = r.start(ctx, rt, j, log)
	}
	if err != nil || c == nil {
		return err
	}
	exit, err := r.wait(ctx, rt, j, c)
	if err != nil {
		return err
	}
	// The container has ended: finish the report even if asked to stop.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.FinishTimeout)
	defer cancel()
	r.finish(fctx, rt, j, exit, log)
	return nil
}

// holdsClaim reports whether the fold gives this runner's claim the
// attempt, still starting (nothing created yet, or not reported), and the
// claim's sequence.
func (r *Runner) holdsClaim(key attemptKey) (claimSeq uint64, mine bool) {
	r.cfg.Replica.Read(func(s *projections.State) {
		t := s.Tasks[key.task]
		mine = t != nil && t.Attempt == key.attempt && t.Active() && t.Status == projections.TaskStarting && t.Claim == r.cfg.Writer.Actor
		if mine {
			claimSeq = t.ClaimSeq
		}
	})
	return claimSeq, mine
}

func claimKey(key attemptKey, runner string, claimSeq uint64) string {
	return actor.TaskKey(key.task, key.attempt, events.TypeTaskAttemptClaimed) + ":" + runner + ":" + strconv.FormatUint(claimSeq, 10)
}

// withdraw gives back this runner's claim on an attempt it started nothing
// for, after giving up the attempt's node: the new owner then claims it at
// once, whatever the order in which the two saw the node change hands. If
// the create had reached Docker, the new owner's create hits the name
// conflict and adopts the container.
func (r *Runner) withdraw(ctx context.Context, j job) {
	claimSeq, mine := r.holdsClaim(j.key)
	if !mine {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, r.cfg.FinishTimeout)
	defer cancel()
	p := &events.AttemptClaimed{TaskID: j.key.task, Attempt: j.key.attempt, NodeID: j.node.ID, Supersedes: r.cfg.Writer.Actor}
	if _, err := r.cfg.Writer.Propose(wctx, actor.Proposal{
		Key: claimKey(j.key, "", claimSeq), Payload: p, CorrelationID: j.correlation, CausationID: j.causation,
	}); err != nil {
		r.log.WarnContext(ctx, "withdrawing a claim", slog.String("task_id", j.key.task), slog.Int("attempt", j.key.attempt), slog.Any("error", err))
	}
}

// claim proposes this runner's claim on the attempt (unless the fold has it
// already) and waits for the fold's verdict: only the claimant creates the
// container. Folding up to the claim also folds every report before it, so
// a claim that comes after the attempt ran elsewhere is refused.
func (r *Runner) claim(ctx context.Context, j job, log *slog.Logger) error {
	me := r.cfg.Writer.Actor
	if !j.claimed {
		p := &events.AttemptClaimed{TaskID: j.key.task, Attempt: j.key.attempt, NodeID: j.node.ID, Runner: me, Supersedes: j.supersedes}
		acks, err := r.cfg.Writer.Propose(ctx, actor.Proposal{
			// The claimant and the state of the claim it changes are part
			// of the key: the duplicate window must merge neither two
			// runners' claims nor this runner's claims before and after a
			// withdrawal.
			Key:     claimKey(j.key, me, j.claimSeq),
			Payload: p, CorrelationID: j.correlation, CausationID: j.causation,
		})
		if err != nil {
			return err
		}
		if _, err := r.cfg.Replica.WaitSeq(ctx, acks[0].Seq); err != nil && !errors.Is(err, projections.ErrOutcomeForgotten) {
			return err
		}
	}
	if _, mine := r.holdsClaim(j.key); !mine {
		log.DebugContext(ctx, "attempt not claimed; another runner creates its container")
		return errNotClaimed
	}
	return nil
}

func (r *Runner) start(ctx context.Context, rt runtime.Runtime, j job, log *slog.Logger) (runtime.Container, error) {
	if j.specErr != nil {
		return nil, r.propose(ctx, j, &events.StartFailed{TaskID: j.key.task, Attempt: j.key.attempt, NodeID: j.node.ID, Error: j.specErr.Error()})
	}
	c, err := rt.Start(ctx, j.node, j.spec)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var se *runtime.StartError
		nodeFault := errors.As(err, &se) && se.NodeFault
		log.WarnContext(ctx, "container did not start", slog.Any("error", err))
		if rerr := rt.Remove(ctx, j.node, j.spec.Name); rerr != nil {
			log.WarnContext(ctx, "removing container that did not start", slog.Any("error", rerr))
		}
		return nil, r.propose(ctx, j, &events.StartFailed{TaskID: j.key.task, Attempt: j.key.attempt, NodeID: j.node.ID, Error: err.Error(), NodeFault: nodeFault})
	}
	log.DebugContext(ctx, "container started", slog.String("container", j.spec.Name))
	err = r.propose(ctx, j, &events.ContainerStarted{
		TaskID: j.key.task, Attempt: j.key.attempt, NodeID: j.node.ID,
		ContainerID: c.ID(), ContainerName: j.spec.Name, StartedAt: events.Time(c.StartedAt()),
	})
	return c, err
}

// attach finds the container of an attempt started before. A container that
// vanished is reported as an exit with code -1.
func (r *Runner) attach(ctx context.Context, rt runtime.Runtime, j job) (runtime.Container, error) {
	if j.specErr != nil {
		return nil, r.vanished(ctx, j, j.specErr.Error())
	}
	for {
		c, err := rt.Attach(ctx, j.node, j.spec)
		switch {
		case err == nil:
			return c, nil
		case errors.Is(err, runtime.ErrNotFound):
			return nil, r.vanished(ctx, j, fmt.Sprintf("container %s is missing on node %s", j.spec.Name, j.node.Hostname))
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		var se *runtime.StartError
		if errors.As(err, &se) {
			return nil, r.vanished(ctx, j, err.Error())
		}
		r.log.WarnContext(ctx, "attaching to container; retrying", slog.String("container", j.spec.Name), slog.Any("error", err))
		if !actor.Sleep(ctx, r.cfg.RetryDelay) || !r.current(j.key) {
			return nil, context.Canceled
		}
	}
}

func (r *Runner) vanished(ctx context.Context, j job, msg string) error {
	err := r.propose(ctx, j, &events.ContainerExited{TaskID: j.key.task, Attempt: j.key.attempt, NodeID: j.node.ID, ExitCode: -1, Vanished: true, Error: msg})
	if err == nil {
		return errors.New(msg)
	}
	return err
}

// wait waits for the container's exit, attaching again after Docker errors
// for as long as the attempt is current.
func (r *Runner) wait(ctx context.Context, rt runtime.Runtime, j job, c runtime.Container) (runtime.Exit, error) {
	for {
		exit, err := c.Wait(ctx)
		if err == nil {
			return exit, nil
		}
		if ctx.Err() != nil {
			return runtime.Exit{}, ctx.Err()
		}
		r.log.WarnContext(ctx, "waiting for container; retrying", slog.String("container", j.spec.Name), slog.Any("error", err))
		if !actor.Sleep(ctx, r.cfg.RetryDelay) || !r.current(j.key) {
			return runtime.Exit{}, context.Canceled
		}
		if c, err = r.attach(ctx, rt, j); err != nil {
			return runtime.Exit{}, err
		}
	}
}

// archiveFor bounds how long a runner retries storing an attempt's logs: a
// cluster elects a new leader for the log store within seconds of losing
// one (measured 4.5-6.5 s).
const archiveFor = 30 * time.Second

// archive stores an attempt's logs, retrying (the object is named by task
// and attempt, so a retry overwrites a partial put) while the log store
// does not answer, for archiveFor at most.
func (r *Runner) archive(ctx context.Context, name string, logs []byte, log *slog.Logger) error {
	deadline := time.Now().Add(archiveFor)
	for {
		_, err := r.obs.PutBytes(ctx, name, logs)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		log.WarnContext(ctx, "archiving container logs; retrying", slog.Any("error", err))
		if !actor.Sleep(ctx, r.cfg.RetryDelay) {
			return ctx.Err()
		}
	}
}

// finish archives the attempt's logs, reports the exit and removes the
// container, in that order, so that a reported exit always has its logs.
func (r *Runner) finish(ctx context.Context, rt runtime.Runtime, j job, exit runtime.Exit, log *slog.Logger) {
	logs, truncated, err := rt.Logs(ctx, j.node, j.spec.Name, r.cfg.LogLimit)
	if err != nil {
		log.WarnContext(ctx, "reading container logs", slog.Any("error", err))
	}
	if len(logs) > 0 {
		name := events.LogObjectName(j.key.task, j.key.attempt)
		if err := r.archive(ctx, name, logs, log); err != nil {
			log.ErrorContext(ctx, "archiving container logs; reporting the exit without them", slog.Any("error", err))
		} else if err := r.propose(ctx, j, &events.LogsArchived{
			TaskID: j.key.task, Attempt: j.key.attempt,
			Object: name, Bytes: int64(len(logs)), Truncated: truncated,
		}); err != nil {
			return
		}
	}
	if r.lost(j.key) {
		// The attempt was given up with its node while it ran: its exit is
		// stale and must not change the task.
		r.fence(ctx, rt, j.node, runtime.Found{Name: j.spec.Name, TaskID: j.key.task, Attempt: j.key.attempt, ExitCode: exit.Code})
		return
	}
	if err := r.propose(ctx, j, &events.ContainerExited{
		TaskID: j.key.task, Attempt: j.key.attempt, NodeID: j.node.ID, Vanished: exit.Vanished,
		ExitCode: exit.Code, OOMKilled: exit.OOMKilled, Error: exit.Error,
		StartedAt: events.Time(exit.StartedAt), FinishedAt: events.Time(exit.FinishedAt),
	}); err != nil {
		return
	}
	log.DebugContext(ctx, "container exited", slog.String("container", j.spec.Name), slog.Int("exit_code", exit.Code))
	if err := rt.Remove(ctx, j.node, j.spec.Name); err != nil {
		log.WarnContext(ctx, "removing container", slog.Any("error", err))
	}
}
