package hostile

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// monitor records every command Redis executes (MONITOR) until stopped.
type monitor struct {
	mu    sync.Mutex
	lines []string
	stop  func()
}

func startMonitor(t testing.TB, r *redisProc) *monitor {
	conn, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("MONITOR\r\n"))
	m := &monitor{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(conn)
		sc.Buffer(make([]byte, 1<<20), 1<<22)
		for sc.Scan() {
			m.mu.Lock()
			m.lines = append(m.lines, sc.Text())
			m.mu.Unlock()
		}
	}()
	var once sync.Once
	m.stop = func() { once.Do(func() { conn.Close(); <-done }) }
	t.Cleanup(m.stop)
	return m
}
func (m *monitor) all() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}

// sniffer subscribes to every channel and records each message.
type sniffer struct {
	mu   sync.Mutex
	msgs []*redis.Message
	ps   *redis.PubSub
	done chan struct{}
}

func startSniffer(t testing.TB, r *redisProc) *sniffer {
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	ps := c.PSubscribe(context.Background(), "*")
	if _, err := ps.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := &sniffer{ps: ps, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for m := range ps.Channel() {
			s.mu.Lock()
			s.msgs = append(s.msgs, m)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { ps.Close(); <-s.done; c.Close() })
	return s
}
func (s *sniffer) all() []*redis.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*redis.Message(nil), s.msgs...)
}

// TestValuesNeverTravel: with MONITOR and a subscriber on every channel,
// Rotate on one instance writes a distinctive value; it appears in no
// command, no key, no stored value, no message, no log.
func TestValuesNeverTravel(t *testing.T) {
	r := startRedis(t)
	mon := startMonitor(t, r)
	sn := startSniffer(t, r)
	srv := newVault(t)
	srv.SetSecret("Api", secretValue, nil)
	lb := &logBuf{}
	var fans []*instance
	for i := 0; i < 3; i++ {
		p := newProvider(t, srv, &kvsecrets.Options{Logger: lb.logger()})
		mustGet(t, p, "Api")
		fans = append(fans, newFan(t, p, r, &redisfanout.Options{Logger: lb.logger(), ReadRate: 1000}, nil))
	}
	waitConnected(t, fans...)
	const newValue = "ROTATED-9f3e-DISTINCTIVE-value"
	s, err := fans[0].p.Rotate(context.Background(), "Api", newValue, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range fans {
		eventually(t, 10*time.Second, "convergence", func() bool { return mustGet(t, f.p, "Api").Version == s.Version })
		_ = i
	}
	eventually(t, 5*time.Second, "a message on the channel", func() bool { return len(sn.all()) > 0 })
	// Every key and its contents.
	raw := rawClient(t, r)
	ctx := context.Background()
	keys, _ := raw.Keys(ctx, "*").Result()
	for _, k := range keys {
		dump, _ := raw.Dump(ctx, k).Result()
		typ, _ := raw.Type(ctx, k).Result()
		val, _ := raw.Get(ctx, k).Result()
		ttl, _ := raw.TTL(ctx, k).Result()
		t.Logf("key %q type %s ttl %v value %q", k, typ, ttl, val)
		for _, x := range []string{k, dump, val} {
			if strings.Contains(x, newValue) || strings.Contains(x, secretValue) {
				t.Errorf("key %q holds a value", k)
			}
		}
	}
	for _, m := range sn.all() {
		t.Logf("message on %q (%d bytes): %q", m.Channel, len(m.Payload), m.Payload)
		if strings.Contains(m.Payload, newValue) || strings.Contains(m.Payload, secretValue) {
			t.Errorf("a message carries a value")
		}
	}
	mon.stop()
	for _, l := range mon.all() {
		if strings.Contains(l, newValue) || strings.Contains(l, secretValue) {
			t.Errorf("a Redis command carries a value: %.200s", l)
		}
	}
	t.Logf("%d commands monitored; sample: %q", len(mon.all()), mon.all()[:min(8, len(mon.all()))])
	if strings.Contains(lb.String(), newValue) || strings.Contains(lb.String(), secretValue) {
		t.Errorf("logs contain a value")
	}
	var pub uint64
	for _, f := range fans {
		st := f.fan.Status()
		pub += st.Published
		t.Logf("status: %+v", st)
	}
	if pub != 1 {
		t.Errorf("%d publications for one rotation, want 1", pub)
	}
}
