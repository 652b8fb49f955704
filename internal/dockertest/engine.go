package dockertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// Private is a Docker engine a test starts for itself, so that it can kill
// it (a real node failure) without disturbing the other tests. It needs what
// scripts/engines.sh installs (dockerd, root); like Engines, it skips the
// test without them, and fails it when CI=true.
type Private struct {
	Engine
	t       testing.TB
	dir     string
	bridge  string
	subnet  string
	port    int
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	options []string
}

// StartPrivate starts a private engine with the test image loaded from the
// shared engine from. Extra dockerd options (e.g. --live-restore) may be
// given. It is stopped and removed when the test ends.
func StartPrivate(t testing.TB, from Engine, options ...string) *Private {
	t.Helper()
	if _, err := exec.LookPath("dockerd"); err != nil || os.Geteuid() != 0 {
		unavailable(t, "a private engine needs dockerd and root (run scripts/engines.sh as root)")
	}
	p := &Private{t: t, port: freeTCPPort(t), options: options}
	// A bridge of its own; another test may have drawn the same number.
	for try := 0; ; try++ {
		n := 100 + rand.IntN(150)
		p.bridge, p.subnet = fmt.Sprintf("cbt%d", n), fmt.Sprintf("172.31.%d.1/24", n)
		p.dir = filepath.Join(os.TempDir(), "cb-engines", fmt.Sprintf("private-%d-%d", os.Getpid(), n))
		err := exec.CommandContext(context.Background(), "ip", "link", "add", "name", p.bridge, "type", "bridge").Run()
		if err == nil {
			break
		}
		if try == 20 {
			t.Fatalf("no free bridge for a private engine: %v", err)
		}
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "addr", "add", p.subnet, "dev", p.bridge)
	run(t, "ip", "link", "set", p.bridge, "up")
	t.Cleanup(p.remove)
	p.Start()
	p.loadImage(from)
	return p
}

func freeTCPPort(t testing.TB) int {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(context.Background(), name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// Start starts (or restarts) the engine's dockerd and waits until it
// answers.
func (p *Private) Start() {
	p.t.Helper()
	_ = os.Remove(filepath.Join(p.dir, "docker.pid")) // left behind by a SIGKILL
	args := append([]string{
		"--data-root", filepath.Join(p.dir, "data"), "--exec-root", filepath.Join(p.dir, "exec"),
		"--pidfile", filepath.Join(p.dir, "docker.pid"),
		"-H", "unix://" + filepath.Join(p.dir, "docker.sock"), "-H", fmt.Sprintf("tcp://127.0.0.1:%d", p.port),
		"--bridge", p.bridge, "--iptables=false", "--ip6tables=false",
	}, p.options...)
	log, err := os.OpenFile(filepath.Join(p.dir, "dockerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.CommandContext(context.Background(), "dockerd", args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("starting dockerd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = log.Close(); close(exited) }()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	p.Hostname = fmt.Sprintf("tcp://127.0.0.1:%d", p.port)
	cli, err := client.NewClientWithOpts(client.WithHost(p.Hostname), client.WithAPIVersionNegotiation())
	if err != nil {
		p.t.Fatal(err)
	}
	p.Client = cli
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Ping(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(filepath.Join(p.dir, "dockerd.log"))
			p.t.Fatalf("private engine did not start: %v\n%s", err, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kill kills the engine's dockerd with SIGKILL, as a crashed node.
func (p *Private) Kill() {
	p.t.Helper()
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// stop stops dockerd gracefully, so that it unmounts what it mounted.
func (p *Private) stop() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func (p *Private) remove() {
	// A killed engine may have left containers running under its
	// containerd: start it once more so that it cleans up, then stop it.
	select {
	case <-p.exited:
		p.Start()
	default:
	}
	p.stop()
	if p.Client != nil {
		_ = p.Client.Close()
	}
	_ = exec.CommandContext(context.Background(), "ip", "link", "del", p.bridge).Run()
	unmountUnder(p.dir) // dockerd bind-mounts its data root onto itself
	_ = os.RemoveAll(p.dir)
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	raw, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var points []string
	for line := range strings.SplitSeq(string(raw), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			points = append(points, f[1])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// loadImage copies the test image from another engine.
func (p *Private) loadImage(from Engine) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rc, err := from.Client.ImageSave(ctx, []string{Image})
	if err != nil {
		p.t.Fatalf("saving the test image: %v", err)
	}
	defer rc.Close()
	resp, err := p.Client.ImageLoad(ctx, rc)
	if err != nil {
		p.t.Fatalf("loading the test image: %v", err)
	}
	_ = resp.Body.Close()
}
