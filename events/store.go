package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names of the JetStream assets the broker uses.
const (
	// StreamName is the one stream that holds every domain event.
	StreamName = "CB_EVENTS"
	// BucketTasks holds one JSON view per task, keyed by task id.
	BucketTasks = "cb_tasks"
	// BucketNodes holds one JSON view per node, keyed by node id.
	BucketNodes = "cb_nodes"
	// BucketIdempotency holds the answers to requests sent with an
	// X-Idempotency-Key, for IdempotencyTTL.
	BucketIdempotency = "cb_idempotency"
	// BucketLeases holds the leases that share work between broker
	// instances (the active scheduler, node ownership); its entries expire
	// LeaseTTL after their last write.
	BucketLeases = "cb_leases"
	// BucketMeta holds bookkeeping such as the projector's last applied
	// sequence (key KeyProjectorSeq).
	BucketMeta = "cb_meta"
	// ObjectStoreLogs holds container logs, one object per task attempt
	// (see LogObjectName).
	ObjectStoreLogs = "cb_logs"
	// ObjectStoreSnapshots holds fold snapshots, one object per snapshot
	// (see SnapshotObjectName); they only speed up start-up and replay.
	ObjectStoreSnapshots = "cb_snapshots"

	// KeyProjectorSeq is the BucketMeta key holding the last stream sequence
	// the projector wrote to the views.
	KeyProjectorSeq = "projector.last_seq"
	// KeyBrokerID is the BucketMeta key holding the id of this event store;
	// every container the broker creates carries it as a label.
	KeyBrokerID = "broker.id"
)

// LeaseTTL is how long a lease lives without renewal: a standby takes over
// from a dead holder within about this time.
const LeaseTTL = 4 * time.Second

// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id.
const DuplicateWindow = 2 * time.Minute

// IdempotencyTTL is how long an X-Idempotency-Key's answer is replayed, as
// the seed's idempotent-request middleware: one day.
const IdempotencyTTL = 24 * time.Hour

// StreamConfig returns the definition of the event stream: file storage, no
// size or age limits (an audit log does not silently drop history), new
// messages refused rather than old ones dropped if limits are ever set,
// deletes and purges denied.
func StreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "container broker domain events",
		Subjects:    []string{AllSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     -1,
		MaxBytes:    -1,
		MaxAge:      0,
		Duplicates:  DuplicateWindow,
		DenyDelete:  true,
		DenyPurge:   true,
		Replicas:    max(replicas, 1),
	}
}

// KeyValueConfigs returns the definitions of the view buckets.
func KeyValueConfigs(replicas int) []jetstream.KeyValueConfig {
	mk := func(name, desc string) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{
			Bucket:      name,
			Description: desc,
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
		}
	}
	idem := mk(BucketIdempotency, "answers to requests with an X-Idempotency-Key")
	idem.TTL = IdempotencyTTL
	leases := mk(BucketLeases, "leases sharing work between broker instances")
	leases.TTL = LeaseTTL
	leases.Storage = jetstream.MemoryStorage
	return []jetstream.KeyValueConfig{
		mk(BucketTasks, "task views projected from "+StreamName),
		mk(BucketNodes, "node views projected from "+StreamName),
		mk(BucketMeta, "projection bookkeeping"),
		idem,
		leases,
	}
}

// ObjectStoreConfigs returns the definitions of the log archive and the
// snapshot store.
func ObjectStoreConfigs(replicas int) []jetstream.ObjectStoreConfig {
	return []jetstream.ObjectStoreConfig{{
		Bucket:      ObjectStoreLogs,
		Description: "container logs, one object per task attempt",
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}, {
		Bucket:      ObjectStoreSnapshots,
		Description: "fold snapshots: the state at a stream sequence",
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}}
}

// SnapshotObjectName names the fold snapshot taken at a stream sequence;
// names sort by sequence.
func SnapshotObjectName(seq uint64) string {
	return fmt.Sprintf("fold/%020d", seq)
}

// LogObjectName names the archived logs of one task attempt.
func LogObjectName(taskID string, attempt int) string {
	return fmt.Sprintf("%s/%d", taskID, attempt)
}

// Ensure creates or updates the stream, the KV buckets and the object stores
// with the given replication factor.
//
// Each asset is created first and updated only when it exists with another
// configuration; nats.go's CreateOrUpdate* do the reverse. On a cluster,
// brokers starting together then do not collide: concurrent creates with
// one configuration all succeed, while an update racing a create of the same
// stream left both unanswered until their timeouts (nats-server 2.15.2).
// Concurrent updates (brokers upgrading the replication together) can still
// leave one unanswered; its retry then finds the asset up to date.
func Ensure(ctx context.Context, js jetstream.JetStream, replicas int) error {
	if _, err := js.CreateStream(ctx, StreamConfig(replicas)); errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		_, err = js.UpdateStream(ctx, StreamConfig(replicas))
		if err != nil {
			return fmt.Errorf("updating stream %s: %w", StreamName, err)
		}
	} else if err != nil {
		return fmt.Errorf("creating stream %s: %w", StreamName, err)
	}
	for _, cfg := range KeyValueConfigs(replicas) {
		if _, err := js.CreateKeyValue(ctx, cfg); errors.Is(err, jetstream.ErrBucketExists) {
			if _, err := js.UpdateKeyValue(ctx, cfg); err != nil {
				return fmt.Errorf("updating bucket %s: %w", cfg.Bucket, err)
			}
		} else if err != nil {
			return fmt.Errorf("creating bucket %s: %w", cfg.Bucket, err)
		}
	}
	for _, cfg := range ObjectStoreConfigs(replicas) {
		if _, err := js.CreateObjectStore(ctx, cfg); errors.Is(err, jetstream.ErrBucketExists) {
			if _, err := js.UpdateObjectStore(ctx, cfg); err != nil {
				return fmt.Errorf("updating object store %s: %w", cfg.Bucket, err)
			}
		} else if err != nil {
			return fmt.Errorf("creating object store %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}
