// Package gateway is the broker's edge: an echo HTTP API that keeps
// container-broker's REST routes, field names and status codes. Writes are
// turned into events appended to the log; the gateway then waits until the
// process's fold has applied them and answers with the fold's verdict, so a
// write that answered 2xx is visible to the next read. Reads come from the
// fold. This is the only place errors become HTTP statuses.
package gateway
