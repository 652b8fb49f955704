// Package services holds the broker's actors: the scheduler (decisions), the
// runner (Docker side effects), the node health monitor and the runtimes
// that talk to nodes. Each actor reads the process's fold
// (projections.Replica), proposes events through one writer (package actor)
// and acts only on events the fold accepted.
package services
