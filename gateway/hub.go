package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// Errors a subscription of the hub ends with.
var (
	// ErrSlowClient ends a subscription whose buffer was full when an event
	// for it arrived. The client may resume from the last id it received.
	ErrSlowClient = errors.New("event stream client too slow")
	// ErrHubStopped ends every subscription when the hub stops.
	ErrHubStopped = errors.New("event hub stopped")
)

// HubConfig configures a Hub.
type HubConfig struct {
	// JetStream is the connection to the event stream. Required.
	JetStream jetstream.JetStream
	// Replica is the process's fold; tags and placements of tasks the hub
	// has not followed yet are read from it. Required.
	Replica *projections.Replica
	// Remember is how many recent events the hub keeps for clients that
	// resume. Defaults to 4096.
	Remember int
	// RememberBytes caps the size of those events' SSE messages together.
	// Defaults to 64 MiB (events may be up to 1 MiB each).
	RememberBytes int
	// ClientBuffer is how many events may wait for one client; a client
	// that falls further behind is disconnected. Defaults to 256.
	ClientBuffer int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Hub reads the event stream once for the whole process, with one ordered
// consumer, and fans every event out to the subscriptions of GET /events.
// It keeps the most recent events in a ring for clients that resume; older
// ones are read from the stream by sequence (no consumer per client).
type Hub struct {
	cfg     HubConfig
	log     *slog.Logger
	ready   chan struct{}
	stopped chan struct{}
	once    sync.Once

	mu     sync.Mutex
	stream jetstream.Stream
	// head is the sequence of the last event the hub read; floor is such
	// that the ring holds every event after it.
	head, floor uint64
	ring        []*item // circular: count items, the newest before next
	next, count int
	bytes       int // of the ring's SSE messages
	subs        map[*subscription]struct{}
	// tasks is what the hub has followed of each task since it started.
	tasks   map[string]*taskRef
	dropped uint64
}

// NewHub returns a hub; Run reads the stream.
func NewHub(cfg HubConfig) (*Hub, error) {
	if cfg.JetStream == nil || cfg.Replica == nil {
		return nil, errors.New("invalid hub config: JetStream and Replica are required")
	}
	if cfg.Remember <= 0 {
		cfg.Remember = 4096
	}
	if cfg.RememberBytes <= 0 {
		cfg.RememberBytes = 64 << 20
	}
	if cfg.ClientBuffer <= 0 {
		cfg.ClientBuffer = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Hub{
		cfg: cfg, log: cfg.Logger.With(slog.String("component", "event_hub")),
		ready: make(chan struct{}), stopped: make(chan struct{}),
		ring: make([]*item, cfg.Remember), subs: map[*subscription]struct{}{}, tasks: map[string]*taskRef{},
	}, nil
}

// item is one event as the hub hands it out: what the filters look at and
// the SSE message, encoded once for every client.
type item struct {
	seq  uint64
	typ  events.Type
	agg  string // aggregate kind, "task" or "node"
	id   string // aggregate id
	node string // the node the event concerns, "" if none
	// tags of the event's task; shared between items and never modified.
	tags  map[string]string
	frame []byte
}

// taskRef is what the hub knows of a task: its tags and the node of its
// current or last attempt.
type taskRef struct {
	tags map[string]string
	node string
}

// subscription is one client's share of the stream.
type subscription struct {
	filter *eventFilter
	// after: events up to this sequence were or will be delivered
	// otherwise (catch-up); the hub skips them.
	after uint64
	ch    chan *item
	done  chan struct{} // closed when the hub ends the subscription
	err   error         // why, set before done is closed
}

// Run reads the stream from its end, as it is when Run starts, until ctx is
// done; then it ends every subscription.
func (h *Hub) Run(ctx context.Context) error {
	defer h.stop()
	err := h.run(ctx)
	if err != nil && ctx.Err() != nil {
		return nil //nolint:nilerr // stopped while starting
	}
	return err
}

func (h *Hub) run(ctx context.Context) error {
	var (
		stream jetstream.Stream
		cons   jetstream.Consumer
		last   uint64
	)
	err := events.Retry(ctx, h.log, "opening the event stream", time.Second, func(ctx context.Context) error {
		var err error
		if stream, err = h.cfg.JetStream.Stream(ctx, events.StreamName); err != nil {
			return fmt.Errorf("opening stream %s: %w", events.StreamName, err)
		}
		info, err := stream.Info(ctx)
		if err != nil {
			return fmt.Errorf("reading stream %s: %w", events.StreamName, err)
		}
		last = info.State.LastSeq
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.AllSubjects}, DeliverPolicy: jetstream.DeliverAllPolicy}
		if last > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, last+1
		}
		if cons, err = h.cfg.JetStream.OrderedConsumer(ctx, events.StreamName, cfg); err != nil {
			return fmt.Errorf("consuming stream %s: %w", events.StreamName, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.stream, h.head, h.floor = stream, last, last
	h.mu.Unlock()
	cc, err := cons.Consume(func(m jetstream.Msg) { h.handle(ctx, m) },
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			h.log.WarnContext(ctx, "event stream consumer", slog.Any("error", err))
		}))
	if err != nil {
		return fmt.Errorf("consuming stream %s: %w", events.StreamName, err)
	}
	close(h.ready)
	h.log.InfoContext(ctx, "event hub started", slog.Uint64("from_seq", last+1))
	<-ctx.Done()
	cc.Stop()
	<-cc.Closed()
	return nil
}

// stop ends every subscription and refuses new ones.
func (h *Hub) stop() {
	h.once.Do(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		close(h.stopped)
		for sub := range h.subs {
			h.endLocked(sub, ErrHubStopped)
		}
	})
}

// handle takes one event of the stream in log order: it waits until the
// fold has applied it (so that its verdict, the task's tags and placement
// are known), follows the task, remembers the event and offers it to every
// subscription.
func (h *Hub) handle(ctx context.Context, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		h.log.WarnContext(ctx, "event without metadata", slog.Any("error", err))
		return
	}
	seq := md.Sequence.Stream
	env, err := events.Decode(m.Data())
	if err != nil {
		h.log.WarnContext(ctx, "not streaming an undecodable event", slog.Uint64("seq", seq), slog.Any("error", err))
		h.mu.Lock()
		h.head = seq
		h.mu.Unlock()
		return
	}
	env.Seq = seq
	out, werr := h.cfg.Replica.WaitSeq(ctx, seq)
	if werr != nil && ctx.Err() != nil {
		return
	}
	it, err := newItem(env)
	if err != nil {
		h.log.ErrorContext(ctx, "not streaming an event", slog.Uint64("seq", seq), slog.Any("error", err))
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.followLocked(it, env, verdict{known: werr == nil, accepted: werr == nil && out.Accepted})
	h.rememberLocked(it)
	h.head = seq
	for sub := range h.subs {
		h.offerLocked(sub, it)
	}
}

// newItem builds an event's item with its SSE message; tags and, for
// events whose payload does not name a node, the node are filled in by
// followLocked or lookupLocked.
func newItem(env events.Envelope) (*item, error) {
	frame, err := sseFrame(env)
	if err != nil {
		return nil, err
	}
	it := &item{seq: env.Seq, typ: env.Type, agg: env.Type.Aggregate(), id: env.AggregateID, frame: frame}
	if it.agg == events.AggregateNode {
		it.node = env.AggregateID
		return it, nil
	}
	var named struct {
		NodeID string `json:"node_id"`
	}
	if json.Unmarshal(env.Data, &named) == nil {
		it.node = named.NodeID
	}
	if env.Type == events.TypeTaskSubmitted {
		var p events.TaskSubmitted
		if json.Unmarshal(env.Data, &p) == nil {
			it.tags = p.Tags
		}
	}
	return it, nil
}

// verdict is the fold's verdict on an event, when it still remembers it.
type verdict struct{ known, accepted bool }

// followLocked completes a live item from what the hub knows of its task
// (its tags; the node of the last accepted reservation before it) and
// updates that with the event and the fold's verdict on it. Without a
// verdict (the hub fell further behind the fold than the fold remembers) it
// takes the task as the fold has it now.
func (h *Hub) followLocked(it *item, env events.Envelope, v verdict) {
	if it.agg != events.AggregateTask {
		return
	}
	ref, known := h.tasks[it.id]
	if !known || !v.known {
		var found bool
		ref, found = h.fromReplica(it.id)
		if v.accepted || found {
			h.tasks[it.id] = ref
		}
	}
	if v.accepted {
		switch env.Type {
		case events.TypeTaskSubmitted:
			if it.tags != nil {
				ref.tags = it.tags
			}
		case events.TypeTaskSlotReserved:
			ref.node = it.node
		case events.TypeTaskDeleted:
			delete(h.tasks, it.id)
		}
	}
	h.complete(it, ref)
}

// lookupLocked completes an item read from the stream for a client that
// resumes from before the ring: the task's tags, and its current placement
// for events whose payload names no node.
func (h *Hub) lookupLocked(it *item) {
	if it.agg != events.AggregateTask {
		return
	}
	ref, ok := h.tasks[it.id]
	if !ok {
		ref, _ = h.fromReplica(it.id)
	}
	h.complete(it, ref)
}

func (*Hub) complete(it *item, ref *taskRef) {
	if it.tags == nil {
		it.tags = ref.tags
	}
	if it.node == "" {
		it.node = ref.node
	}
}

// fromReplica reads a task's tags and placement from the fold.
func (h *Hub) fromReplica(id string) (*taskRef, bool) {
	ref, found := &taskRef{}, false
	h.cfg.Replica.Read(func(s *projections.State) {
		if t, ok := s.Tasks[id]; ok {
			ref.tags, ref.node, found = maps.Clone(t.Tags), t.NodeID, true
		}
	})
	return ref, found
}

func (h *Hub) rememberLocked(it *item) {
	size := len(h.ring)
	if h.count == size {
		h.evictLocked()
	}
	h.ring[h.next] = it
	h.next = (h.next + 1) % size
	h.count++
	h.bytes += len(it.frame)
	for h.count > 1 && h.bytes > h.cfg.RememberBytes {
		h.evictLocked()
	}
}

// evictLocked forgets the oldest remembered event.
func (h *Hub) evictLocked() {
	size := len(h.ring)
	i := (h.next - h.count + size) % size
	it := h.ring[i]
	h.ring[i] = nil
	h.floor, h.bytes, h.count = it.seq, h.bytes-len(it.frame), h.count-1
}

// ringAfterLocked returns the remembered events after seq that match f, in
// order.
func (h *Hub) ringAfterLocked(seq uint64, f *eventFilter) []*item {
	var out []*item
	size := len(h.ring)
	for i := range h.count {
		it := h.ring[(h.next-h.count+i+size)%size]
		if it.seq > seq && f.match(it) {
			out = append(out, it)
		}
	}
	return out
}

// offerLocked hands an event to a subscription, or ends the subscription if
// its buffer is full.
func (h *Hub) offerLocked(sub *subscription, it *item) {
	if it.seq <= sub.after || !sub.filter.match(it) {
		return
	}
	select {
	case sub.ch <- it:
	default:
		h.dropped++
		h.endLocked(sub, ErrSlowClient)
	}
}

func (h *Hub) endLocked(sub *subscription, err error) {
	delete(h.subs, sub)
	sub.err = err
	close(sub.done)
}

func (h *Hub) addLocked(f *eventFilter, after uint64) *subscription {
	sub := &subscription{filter: f, after: after, ch: make(chan *item, h.cfg.ClientBuffer), done: make(chan struct{})}
	h.subs[sub] = struct{}{}
	return sub
}

// waitReady waits until the hub reads the stream.
func (h *Hub) waitReady(ctx context.Context) error {
	select {
	case <-h.ready:
	case <-h.stopped:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-h.stopped:
		return ErrHubStopped
	default:
		return nil
	}
}

// subscribe registers a subscription to the events after the last one the
// hub has read.
func (h *Hub) subscribe(ctx context.Context, f *eventFilter) (*subscription, error) {
	if err := h.waitReady(ctx); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.stopped:
		return nil, ErrHubStopped
	default:
	}
	return h.addLocked(f, h.head), nil
}

// resume hands every event after seq that matches f to emit, in order, and
// returns a subscription to the ones after those, with no gap and no
// duplicate: events the ring no longer holds are read from the stream one
// by one by sequence, then the ring's events are taken and the subscription
// registered under one lock.
func (h *Hub) resume(ctx context.Context, f *eventFilter, seq uint64, emit func(*item) error) (*subscription, error) {
	if err := h.waitReady(ctx); err != nil {
		return nil, err
	}
	cursor := seq
	for {
		sub, backlog, stream, err := h.tryRegister(f, cursor)
		if err != nil {
			return nil, err
		}
		if sub != nil {
			for _, it := range backlog {
				if err := emit(it); err != nil {
					h.unsubscribe(sub)
					return nil, err
				}
			}
			return sub, nil
		}
		if cursor, err = h.readOne(ctx, stream, f, cursor, emit); err != nil {
			return nil, err
		}
	}
}

// tryRegister registers a subscription if the ring holds every event after
// cursor, and returns those that match; else it returns the stream to read
// from.
func (h *Hub) tryRegister(f *eventFilter, cursor uint64) (*subscription, []*item, jetstream.Stream, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.stopped:
		return nil, nil, nil, ErrHubStopped
	default:
	}
	if cursor < h.floor {
		return nil, nil, h.stream, nil
	}
	backlog := h.ringAfterLocked(cursor, f)
	return h.addLocked(f, max(cursor, h.head)), backlog, nil, nil
}

// readOne reads the first event after cursor on f's subject from the
// stream, hands it to emit if it matches, and returns its sequence. When
// there is none, it returns the stream's last sequence as it was before the
// read: nothing after cursor up to there matches.
func (h *Hub) readOne(ctx context.Context, stream jetstream.Stream, f *eventFilter, cursor uint64, emit func(*item) error) (uint64, error) {
	subject := f.subject()
	msg, err := stream.GetMsg(ctx, cursor+1, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		info, ierr := stream.Info(ctx)
		if ierr != nil {
			return 0, fmt.Errorf("reading stream %s: %w", events.StreamName, ierr)
		}
		msg, err = stream.GetMsg(ctx, cursor+1, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return max(cursor, info.State.LastSeq), nil
		}
	}
	if err != nil {
		return 0, fmt.Errorf("reading event %d: %w", cursor+1, err)
	}
	env, err := events.Decode(msg.Data)
	if err != nil {
		return msg.Sequence, nil //nolint:nilerr // not streamed, as the hub skips it live
	}
	env.Seq = msg.Sequence
	it, err := newItem(env)
	if err != nil {
		return 0, err
	}
	h.mu.Lock()
	h.lookupLocked(it)
	h.mu.Unlock()
	if f.match(it) {
		if err := emit(it); err != nil {
			return 0, err
		}
	}
	return msg.Sequence, nil
}

// unsubscribe removes a subscription whose client has gone.
func (h *Hub) unsubscribe(sub *subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, sub)
}

// hubStats is what the hub reports about its clients.
type hubStats struct {
	clients int
	dropped uint64
}

func (h *Hub) stats() hubStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return hubStats{clients: len(h.subs), dropped: h.dropped}
}
