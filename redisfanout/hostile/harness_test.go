package hostile

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// hmacKey is the fleet's shared key in these tests.
var hmacKey = bytes.Repeat([]byte{0x5a, 0xa5, 0x13, 0x37}, 8)

// redisProc is one redis-server this test started.
type redisProc struct {
	t    testing.TB
	port int
	dir  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return p
}

func startRedis(t testing.TB) *redisProc {
	t.Helper()
	r := &redisProc{t: t, port: freePort(t), dir: t.TempDir()}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *redisProc) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

func (r *redisProc) start() {
	r.t.Helper()
	cmd := exec.Command("/usr/bin/redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
	// Wait until it answers PING.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.Addr(), 200*time.Millisecond)
		if err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			c.Write([]byte("PING\r\n"))
			buf := make([]byte, 16)
			n, _ := c.Read(buf)
			c.Close()
			if bytes.HasPrefix(buf[:n], []byte("+PONG")) {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s did not start", r.Addr())
		}
		time.Sleep(20 * time.Millisecond) // polling an external process's port: no channel to wait on
	}
}

// kill stops the server with SIGKILL and waits for it to exit.
func (r *redisProc) kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT)
	cmd.Process.Kill()
	<-done
}

func (r *redisProc) signal(s os.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.cmd.Process.Signal(s)
	}
}

func (r *redisProc) stop() { r.kill() }

// rawClient is an attacker's (or observer's) plain go-redis client.
func rawClient(t testing.TB, r *redisProc) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}

// logBuf collects logs from every component, to be searched for values.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}
func (l *logBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.buf.String() }
func (l *logBuf) Reset()         { l.mu.Lock(); defer l.mu.Unlock(); l.buf.Reset() }
func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newVault(t testing.TB) *kvtest.Server {
	return kvtest.NewTestServer(t, nil)
}

func newProvider(t testing.TB, srv *kvtest.Server, o *kvsecrets.Options) *kvsecrets.Provider {
	t.Helper()
	if o == nil {
		o = &kvsecrets.Options{}
	}
	o.ClientOptions = srv.ClientOptions()
	p, err := kvsecrets.NewProvider(srv.URL(), srv.Credential(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type instance struct {
	p   *kvsecrets.Provider
	rdb *redis.Client
	fan *redisfanout.FanOut
}

func newFan(t testing.TB, p *kvsecrets.Provider, r *redisProc, o *redisfanout.Options, ro *redis.Options) *instance {
	t.Helper()
	if ro == nil {
		ro = &redis.Options{}
	}
	ro.Addr = r.Addr()
	rdb := redis.NewClient(ro)
	if o == nil {
		o = &redisfanout.Options{}
	}
	if o.Key == nil {
		o.Key = hmacKey
	}
	fan, err := redisfanout.New(p, rdb, o)
	if err != nil {
		rdb.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { fan.Close(); rdb.Close() })
	return &instance{p: p, rdb: rdb, fan: fan}
}

func waitConnected(t testing.TB, fans ...*instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, f := range fans {
		if err := f.fan.WaitConnected(ctx); err != nil {
			t.Fatalf("instance %d: WaitConnected: %v", i, err)
		}
	}
}

// eventually waits for cond with a deadline, polling (the conditions are
// counters in other processes or libraries with no channel to wait on).
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// getsOf counts the vault's GETs of a secret's value.
func getsOf(srv *kvtest.Server, name string) int {
	n := 0
	for _, r := range srv.RequestLog() {
		if r.Op == "get" && r.Secret == name && r.Authorized {
			n++
		}
	}
	return n
}

func getTimes(srv *kvtest.Server, name string) []time.Time {
	var ts []time.Time
	for _, r := range srv.RequestLog() {
		if r.Op == "get" && (name == "" || r.Secret == name) && r.Authorized {
			ts = append(ts, r.Time)
		}
	}
	return ts
}

func mustGet(t testing.TB, p *kvsecrets.Provider, name string) kvsecrets.Secret {
	t.Helper()
	s, err := p.GetSecret(context.Background(), name)
	if err != nil {
		t.Fatalf("GetSecret(%s): %v", name, err)
	}
	return s
}

var _ = fmt.Sprintf
