package natstest

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Account is the account streams live in when the servers have no users.
const Account = server.DEFAULT_GLOBAL_ACCOUNT

// Port range of the cluster's client and route ports: below Linux's
// ephemeral range (32768–60999), so that no outgoing connection takes a
// port a killed server needs again when it restarts. nats-server's own
// cluster tests stay outside that range for the same reason.
const (
	portMin = 20000
	portMax = 32000
)

// readyTimeout bounds how long WaitReady and StreamLeader wait.
const readyTimeout = 30 * time.Second

// Servers is an in-process JetStream cluster started by Cluster. Its
// methods call t.Fatal, so call them from the test's goroutine.
type Servers struct {
	t     testing.TB
	mu    sync.Mutex
	opts  []*server.Options
	srv   []*server.Server // nil while killed
	links []*link
}

// Cluster starts an n-server JetStream cluster in the test process: unique
// server names, one cluster name, explicit client and route ports picked
// free from a range outside the ephemeral one (retried with other ports if
// one is taken meanwhile), a store directory of its own for each server.
// The routes between the servers run through TCP forwarders in the test
// process, so that Kill can make a server vanish as a crashed process does.
// It returns once JetStream has a meta leader and every server is current
// (about a second). Everything is shut down when the test ends.
//
// Clients must connect with the TCP URL list (URLs), not in-process: an
// in-process connection cannot fail over to another server.
//
// Each configure function gets server i's options (name, ports, store,
// cluster and routes set) and returns the options to start it with, for a
// test that runs the servers from a configuration file, say; the returned
// options must keep the client port, the cluster port and the routes
// (Cluster sets Cluster.Advertise after them).
func Cluster(t testing.TB, n int, configure ...func(i int, o *server.Options) (*server.Options, error)) *Servers {
	t.Helper()
	if n < 2 {
		// A clustered server alone waits for peers for ever; Run starts one.
		t.Fatalf("natstest.Cluster: want at least two servers, not %d", n)
	}
	base := t.TempDir() // removed after the servers are down: cleanups run last-in first-out
	c := &Servers{t: t, srv: make([]*server.Server, n)}
	t.Cleanup(c.shutdown)
	for attempt := 1; ; attempt++ {
		err := c.startAll(base, n, configure)
		if err == nil {
			break
		}
		c.shutdown()
		if attempt == 5 {
			t.Fatalf("natstest.Cluster: %v", err)
		}
	}
	c.WaitReady()
	return c
}

// startAll starts n servers on newly picked ports: for each a client port,
// a route port, a link from each other server (its routes) and a link
// anyone may use (its advertised route address, for routes learnt by
// gossip).
func (c *Servers) startAll(base string, n int, configure []func(int, *server.Options) (*server.Options, error)) error {
	ports, err := freePorts(n * (n + 2))
	if err != nil {
		return err
	}
	name := "natstest-" + strconv.Itoa(ports[0])
	hostPort := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	clientPort, routePort := ports[:n], ports[n:2*n]
	next := 2 * n
	newLink := func(from, to int) *link {
		l := &link{addr: hostPort(ports[next]), target: hostPort(routePort[to]), ends: [2]int{from, to}}
		next++
		return l
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.opts = make([]*server.Options, n)
	c.links = nil
	routes := make([][]*url.URL, n)
	advertise := make([]string, n)
	for i := range n {
		for j := range n {
			if j != i {
				l := newLink(i, j)
				c.links = append(c.links, l)
				routes[i] = append(routes[i], &url.URL{Scheme: "nats", Host: l.addr})
			}
		}
		l := newLink(i, i)
		c.links = append(c.links, l)
		advertise[i] = l.addr
	}
	for _, l := range c.links {
		if err := l.open(); err != nil {
			return err
		}
	}
	for i := range n {
		c.opts[i] = &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       clientPort[i],
			JetStream:  true,
			StoreDir:   filepath.Join(base, fmt.Sprintf("n%d", i+1)),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: name, Host: "127.0.0.1", Port: routePort[i]},
			Routes:     routes[i],
		}
		for _, f := range configure {
			if c.opts[i], err = f(i, c.opts[i]); err != nil {
				return fmt.Errorf("configuring server %d: %w", i, err)
			}
		}
		c.opts[i].Cluster.Advertise = advertise[i]
		if c.srv[i], err = start(c.opts[i], 5*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// start starts a server with a copy of opts and waits until it listens.
func start(opts *server.Options, wait time.Duration) (*server.Server, error) {
	s, err := server.NewServer(opts.Clone())
	if err != nil {
		return nil, fmt.Errorf("creating nats-server %s: %w", opts.ServerName, err)
	}
	s.Start()
	if !s.ReadyForConnections(wait) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("nats-server %s does not listen on ports %d and %d", opts.ServerName, opts.Port, opts.Cluster.Port)
	}
	return s, nil
}

// freePorts picks n distinct ports in [portMin, portMax) that nothing
// listens on right now.
func freePorts(n int) ([]int, error) {
	seen := map[int]bool{}
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			return nil, fmt.Errorf("no %d free ports in [%d, %d)", n, portMin, portMax)
		}
		r, err := rand.Int(rand.Reader, big.NewInt(portMax-portMin))
		if err != nil {
			return nil, err
		}
		p := portMin + int(r.Int64())
		if seen[p] {
			continue
		}
		seen[p] = true
		ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		ports = append(ports, p)
	}
	return ports, nil
}

// Len is the number of servers, running or killed.
func (c *Servers) Len() int { return len(c.opts) }

// URLs returns the client URLs of every server, running or not,
// comma-separated: the form nats.Connect and the broker's --nats-url take.
func (c *Servers) URLs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	urls := make([]string, len(c.opts))
	for i, o := range c.opts {
		urls[i] = "nats://" + net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
	}
	return strings.Join(urls, ",")
}

// Name returns the server name of server i (n1, n2, ...).
func (c *Servers) Name(i int) string { return c.opts[i].ServerName }

// Server returns server i, or nil while it is killed.
func (c *Servers) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.srv[i]
}

// running returns the running servers by index.
func (c *Servers) running() map[int]*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[int]*server.Server{}
	for i, s := range c.srv {
		if s != nil {
			out[i] = s
		}
	}
	return out
}

// Kill stops server i as a crash would: its routes are cut first, so its
// peers hear nothing more from it (no shutdown notice, no leadership handed
// over) and elect new leaders only when their RAFT timeouts expire; then it
// shuts down, closing its clients' connections. Its store stays for
// Restart.
func (c *Servers) Kill(i int) {
	c.t.Helper()
	c.mu.Lock()
	s := c.srv[i]
	c.srv[i] = nil
	var cut []*link
	for _, l := range c.links {
		if l.ends[0] == i || l.ends[1] == i {
			cut = append(cut, l)
		}
	}
	c.mu.Unlock()
	if s == nil {
		c.t.Fatalf("natstest: server %d is not running", i)
	}
	for _, l := range cut {
		l.cut()
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// Restart starts the killed server i again on the same store and ports; it
// rejoins the cluster and catches up. It returns once the cluster is ready
// (WaitReady).
func (c *Servers) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	running := c.srv[i] != nil
	opts := c.opts[i]
	c.mu.Unlock()
	if running {
		c.t.Fatalf("natstest: server %d is running", i)
	}
	for _, l := range c.linksOf(i) {
		if err := l.open(); err != nil {
			c.t.Fatalf("natstest: restarting server %d: %v", i, err)
		}
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		// Its ports were just released; retry while something else holds one.
		s, err := start(opts, 2*time.Second)
		if err == nil {
			c.mu.Lock()
			c.srv[i] = s
			c.mu.Unlock()
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: restarting server %d: %v", i, err)
		}
	}
	c.WaitReady()
}

// linksOf returns the links of server i whose other end runs.
func (c *Servers) linksOf(i int) []*link {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*link
	for _, l := range c.links {
		other := l.ends[0]
		if other == i {
			other = l.ends[1]
		}
		if (l.ends[0] == i || l.ends[1] == i) && (other == i || c.srv[other] != nil) {
			out = append(out, l)
		}
	}
	return out
}

// WaitReady waits until the running servers form a working JetStream
// cluster: one of them is the meta leader, every one is current with the
// meta group, and the leader sees them all as peers.
func (c *Servers) WaitReady() {
	c.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for !c.ready() {
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: the JetStream cluster is not ready after %s", readyTimeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (c *Servers) ready() bool {
	servers := c.running()
	var leader *server.Server
	for _, s := range servers {
		if !s.JetStreamIsCurrent() {
			return false
		}
		if s.JetStreamIsLeader() {
			leader = s
		}
	}
	return leader != nil && len(leader.JetStreamClusterPeers()) >= len(servers)
}

// StreamLeader returns the index of the server leading the stream (in
// Account), waiting until it has one.
func (c *Servers) StreamLeader(stream string) int {
	c.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		for i, s := range c.running() {
			if s.JetStreamIsStreamLeader(Account, stream) {
				return i
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: stream %s has no leader after %s", stream, readyTimeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// StreamState returns server i's own copy of the stream's state (not the
// leader's), and whether the server holds the stream.
func (c *Servers) StreamState(i int, stream string) (server.StreamState, bool) {
	c.t.Helper()
	s := c.Server(i)
	if s == nil {
		return server.StreamState{}, false
	}
	info, err := s.Jsz(&server.JSzOptions{Account: Account, Streams: true})
	if err != nil {
		c.t.Fatalf("natstest: jsz of server %d: %v", i, err)
	}
	for _, a := range info.AccountDetails {
		for _, sd := range a.Streams {
			if sd.Name == stream {
				return sd.State, true
			}
		}
	}
	return server.StreamState{}, false
}

// Connect returns a JetStream client on the URL list, reconnecting for
// ever; it is closed when the test ends.
func (c *Servers) Connect() (*nats.Conn, jetstream.JetStream) {
	c.t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		c.t.Fatalf("natstest: connecting to the cluster: %v", err)
	}
	c.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// shutdown stops every running server and link and waits until each is
// down.
func (c *Servers) shutdown() {
	c.mu.Lock()
	servers, links := c.srv, c.links
	c.srv, c.links = make([]*server.Server, len(servers)), nil
	c.mu.Unlock()
	for _, s := range servers {
		if s != nil {
			s.Shutdown()
		}
	}
	for _, s := range servers {
		if s != nil {
			s.WaitForShutdown()
		}
	}
	for _, l := range links {
		l.cut()
	}
}
