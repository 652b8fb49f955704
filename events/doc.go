// Package events is the broker's public event contract: the envelope every
// message in the log carries, the versioned event types and their payloads,
// the subject scheme, the codec, and the JetStream definitions (stream, KV
// buckets, object store) together with the one Append path every writer uses.
//
// The package depends on nats.go and ulid only, so a program that subscribes
// to the broker's events can import it without pulling in Docker, echo or the
// NATS server.
//
// Wire names are stable: an event type such as "task.completed.v1" is never
// renamed or edited; a breaking change adds a ".v2" type. Decoders skip types
// they do not know (see ErrUnknownType).
package events
