// Package projections holds the broker's one deterministic fold and the views
// built from it.
//
// State.Apply folds one event from the log into the state and returns its
// Outcome: accepted, or rejected with a reason. The fold is pure: it reads no
// clock, no config and no network, so every process that folds the same
// stream in order agrees on the state at every sequence number. Writers
// propose; the fold decides: a reservation of a taken slot, an exit reported
// for an attempt that is no longer current, a second decision for one attempt
// are all rejected and have no effect.
//
// Replica keeps one such state up to date from the event stream inside a
// process and lets the actors (scheduler, runner, gateway, projector) read it
// and wait for it; Projector writes task and node views to KV buckets.
package projections
