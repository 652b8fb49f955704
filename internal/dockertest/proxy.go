package dockertest

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
)

// HangingEngine puts an HTTP proxy in front of a real engine that never
// answers the requests hang selects (it holds them until the client gives
// up) and passes everything else through: a Docker host that answers its
// pings but hangs on, say, container creation. It returns the proxy's
// address as a node hostname (tcp://127.0.0.1:<port>).
func HangingEngine(t testing.TB, e Engine, hang func(*http.Request) bool) string {
	t.Helper()
	target := e.Hostname
	transport := &http.Transport{}
	upstream := &url.URL{Scheme: "http", Host: "docker"}
	if sock, ok := strings.CutPrefix(target, "unix://"); ok {
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}
	} else {
		upstream.Host = target[strings.Index(target, "://")+3:]
	}
	proxy := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(upstream) },
		Transport:     transport,
		FlushInterval: -1,
	}
	closing := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hang(r) {
			// Read the body, so that the server notices when the client
			// hangs up, then hold the request.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-closing:
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { close(closing); srv.Close(); transport.CloseIdleConnections() })
	return "tcp://" + srv.Listener.Addr().String()
}
