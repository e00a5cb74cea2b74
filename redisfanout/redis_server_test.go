package redisfanout

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// redisServer is a redis-server process of a test's own, on a free
// loopback port, with no persistence.
type redisServer struct {
	t    testing.TB
	path string
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when its output ends
}

// startRedis starts a redis-server for t and stops it when t ends. Without
// redis-server installed the test is skipped, or fails when
// KVSECRETS_REQUIRE_REDIS=1 (as in CI).
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server not found: install Debian's redis-server package (apt-get install redis-server)"
		if os.Getenv("KVSECRETS_REQUIRE_REDIS") == "1" {
			t.Fatal(msg + "; KVSECRETS_REQUIRE_REDIS=1 makes this a failure")
		}
		t.Skip(msg)
	}
	s := &redisServer{t: t, path: path, dir: t.TempDir()}
	t.Cleanup(s.stop)
	// Another process may take the free port before redis-server binds
	// it: try a few.
	for range 5 {
		s.port = freePort(t)
		if s.start() {
			return s
		}
	}
	t.Fatal("redis-server did not start")
	return nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Addr returns host:port.
func (s *redisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// start runs redis-server on s.port and waits for it to accept
// connections; false if it exited first.
func (s *redisServer) start() bool {
	s.t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd = exec.Command(s.path,
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "")
	s.cmd.Stdout, s.cmd.Stderr = w, w
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	w.Close()
	ready := make(chan struct{})
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		defer r.Close()
		sc := bufio.NewScanner(r)
		said := false
		for sc.Scan() {
			if !said && strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				said = true
			}
		}
	}()
	select {
	case <-ready:
		return true
	case <-s.done:
		s.cmd.Wait()
		s.cmd = nil
		return false
	case <-time.After(20 * time.Second):
		s.t.Fatal("redis-server did not say it was ready within 20 s")
		return false
	}
}

// stop kills the server, the process this test started, and waits for it.
func (s *redisServer) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	<-s.done
	s.cmd = nil
}

// restart starts the server again on the same port.
func (s *redisServer) restart() {
	s.t.Helper()
	if !s.start() {
		s.t.Fatalf("redis-server did not start again on port %d", s.port)
	}
}
