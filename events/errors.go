package events

import "errors"

// Sentinel errors to branch on with errors.Is.
var (
	// ErrUnknownType matches an *UnknownTypeError.
	ErrUnknownType = errors.New("unknown event type")
	// ErrMalformed matches a *DecodeError.
	ErrMalformed = errors.New("malformed event")
	// ErrNoKey is returned for an event without an idempotency key.
	ErrNoKey = errors.New("event has no idempotency key")
)

// UnknownTypeError is returned for an event type this version does not know.
type UnknownTypeError struct{ Type Type }

func (e *UnknownTypeError) Error() string { return "unknown event type " + string(e.Type) }

// Is makes errors.Is(err, ErrUnknownType) true.
func (e *UnknownTypeError) Is(target error) bool { return target == ErrUnknownType }

// DecodeError is returned for bytes that are not a valid event.
type DecodeError struct{ Reason string }

func (e *DecodeError) Error() string { return "malformed event: " + e.Reason }

// Is makes errors.Is(err, ErrMalformed) true.
func (e *DecodeError) Is(target error) bool { return target == ErrMalformed }
