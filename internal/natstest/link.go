package natstest

import (
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// link forwards the TCP connections made to its address to a server's
// route port. The cluster's routes run through links, so that Kill can cut
// a server off from its peers before stopping it: they hear nothing more
// from it, as from a crashed process, instead of the shutdown notice an
// in-process Shutdown sends them (on which they elect new leaders at once).
type link struct {
	addr, target string
	// ends are the servers the link connects; it is open while both run.
	ends [2]int

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// open starts forwarding, retrying for a while if the port is still held.
func (l *link) open() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", l.addr)
		if err == nil {
			l.mu.Lock()
			l.ln, l.conns = ln, map[net.Conn]struct{}{}
			l.mu.Unlock()
			l.wg.Go(func() { l.accept(ln) })
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (l *link) accept(ln net.Listener) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := (&net.Dialer{Timeout: time.Second}).DialContext(context.Background(), "tcp", l.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !l.track(in, out) {
			return
		}
		l.wg.Go(func() { l.pipe(in, out) })
		l.wg.Go(func() { l.pipe(out, in) })
	}
}

// track records a forwarded pair; it reports false (and closes them) when
// the link was cut meanwhile.
func (l *link) track(in, out net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		_, _ = in.Close(), out.Close()
		return false
	}
	l.conns[in], l.conns[out] = struct{}{}, struct{}{}
	return true
}

func (l *link) pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	_, _ = dst.Close(), src.Close()
	l.mu.Lock()
	delete(l.conns, dst)
	delete(l.conns, src)
	l.mu.Unlock()
}

// cut closes the listener and every forwarded connection, and waits until
// the link's goroutines are done. Cutting a closed link does nothing.
func (l *link) cut() {
	l.mu.Lock()
	ln := l.ln
	l.ln = nil
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	l.wg.Wait()
}
