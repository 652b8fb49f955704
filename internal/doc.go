// Package internal holds helpers shared by the broker's modules: test
// fixtures for real NATS servers (natstest) and real Docker engines
// (dockertest). Go's internal rule lets every module under
// github.com/cbroker/broker import them, and nothing else.
package internal
