package redisfanout

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietRedis{}) // go-redis logs every failed dial of the restart tests
	goleak.VerifyTestMain(m, ignoreClientPool)
}

// ignoreClientPool: a go-redis client whose dials failed PoolSize times
// probes Redis on a goroutine of its pool that notices Client.Close only
// after its next second's sleep. It is the client's, not the FanOut's.
var ignoreClientPool = goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

var testKey = []byte("0123456789abcdef0123456789abcdef") // 32 bytes

// wait bounds every wait of these tests: generous, as they run under the
// race detector on loaded machines; a passing test waits far less.
const wait = 30 * time.Second

func deadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	t.Cleanup(cancel)
	return ctx
}

// newVault returns a loopback HTTPS vault holding ApiKey = "value-1".
func newVault(t *testing.T) *kvtest.Server {
	vault := kvtest.NewTestServer(t, nil)
	if _, err := vault.SetSecret("ApiKey", "value-1", nil); err != nil {
		t.Fatal(err)
	}
	return vault
}

// instance is one service instance: a Provider with a long TTL, its own
// Redis client and its FanOut, and a channel of its rotations.
type instance struct {
	p         *kvsecrets.Provider
	client    *redis.Client
	f         *FanOut
	rotations chan kvsecrets.RotationEvent
}

func newInstance(t *testing.T, vault *kvtest.Server, addr string, opts *Options) *instance {
	t.Helper()
	p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
		&kvsecrets.Options{ClientOptions: vault.ClientOptions(), TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { client.Close() })
	if opts == nil {
		opts = &Options{}
	}
	o := *opts
	if o.Key == nil {
		o.Key = testKey
	}
	f, err := New(p, client, &o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	in := &instance{p: p, client: client, f: f, rotations: make(chan kvsecrets.RotationEvent, 16)}
	remove := p.AddOnRotate(func(ev kvsecrets.RotationEvent) {
		select {
		case in.rotations <- ev:
		default:
		}
	})
	t.Cleanup(remove)
	return in
}

// get reads ApiKey and checks its value.
func (in *instance) get(t *testing.T, want string) {
	t.Helper()
	got, err := in.p.Get(t.Context(), "ApiKey")
	if err != nil || got != want {
		t.Fatalf("Get = %q, %v; want %q", got, err, want)
	}
}

// waitRotation waits for a rotation of ApiKey to version.
func (in *instance) waitRotation(t *testing.T, ctx context.Context, version string) {
	t.Helper()
	for {
		select {
		case ev := <-in.rotations:
			if ev.Name == "ApiKey" && ev.NewVersion == version {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no rotation to %s: %+v", version, in.f.Status())
		}
	}
}

func (in *instance) waitStatus(t *testing.T, ctx context.Context, what string, cond func(Status) bool) {
	t.Helper()
	if err := in.f.waitFor(ctx, cond); err != nil {
		t.Fatalf("waiting for %s: %v; status %+v", what, err, in.f.Status())
	}
}

// fleet starts n instances on one vault and one Redis, each having read
// ApiKey and subscribed.
func fleet(t *testing.T, vault *kvtest.Server, addr string, n int, opts *Options) []*instance {
	t.Helper()
	ctx := deadline(t)
	var out []*instance
	for range n {
		in := newInstance(t, vault, addr, opts)
		in.get(t, "value-1")
		if err := in.f.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
		out = append(out, in)
	}
	return out
}

// rawSubscriber listens to the channel with a plain go-redis client.
type rawSubscriber struct {
	ps *redis.PubSub
}

func subscribeRaw(t *testing.T, client *redis.Client, channel string) *rawSubscriber {
	t.Helper()
	ps := client.Subscribe(t.Context(), channel)
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.ReceiveTimeout(t.Context(), wait); err != nil { // the confirmation
		t.Fatal(err)
	}
	return &rawSubscriber{ps}
}

// until returns every message up to and including one equal to last.
func (r *rawSubscriber) until(t *testing.T, last string) []string {
	t.Helper()
	var out []string
	for {
		m, err := r.ps.ReceiveTimeout(t.Context(), wait)
		if err != nil {
			t.Fatalf("raw subscriber: %v after %d messages", err, len(out))
		}
		if msg, ok := m.(*redis.Message); ok {
			out = append(out, msg.Payload)
			if msg.Payload == last {
				return out
			}
		}
	}
}

func sum(ins []*instance, field func(Status) uint64) uint64 {
	var n uint64
	for _, in := range ins {
		n += field(in.f.Status())
	}
	return n
}

// Issue 15: one webhook delivery to one instance reaches all three, with
// one read each and one publication fleet-wide.
func TestThreeInstancesConvergeAfterOneWebhookDelivery(t *testing.T) {
	srv := startRedis(t)
	vault := newVault(t)
	ins := fleet(t, vault, srv.Addr(), 3, nil)
	raw := subscribeRaw(t, ins[0].client, DefaultChannel)
	ctx := deadline(t)

	// Event Grid delivers to one instance only, as behind a load balancer.
	sub, err := vault.SubscribeHandler("/events?key=eg-secret",
		ins[0].p.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: "eg-secret"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	before := vault.SecretRequests("ApiKey")

	v2, err := vault.SetSecret("ApiKey", "value-2", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range ins {
		in.waitRotation(t, ctx, v2)
	}
	for _, in := range ins {
		in.get(t, "value-2")
	}
	if err := sub.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if st := sub.Stats(); st.Delivered != 1 {
		t.Errorf("Event Grid delivered %d events, want 1", st.Delivered)
	}
	if n := vault.SecretRequests("ApiKey") - before; n != 3 {
		t.Errorf("the vault saw %d reads of ApiKey for the rotation, want 3 (one per instance)", n)
	}

	// One publication, by the instance the webhook reached; the others
	// heard it and did not publish again.
	ins[0].waitStatus(t, ctx, "the publication", func(s Status) bool { return s.Published == 1 })
	if n := sum(ins, func(s Status) uint64 { return s.Published }); n != 1 {
		t.Errorf("%d publications fleet-wide, want 1", n)
	}
	if n := sum(ins, func(s Status) uint64 { return s.Acted }); n != 2 {
		t.Errorf("%d messages acted on, want 2 (the two instances the webhook missed)", n)
	}
	if n := sum(ins, func(s Status) uint64 { return s.Suppressed }); n != 2 {
		t.Errorf("%d publications suppressed, want 2", n)
	}
	// What went over the channel, up to a marker published after the
	// rotation: one message, for v2.
	if err := ins[0].client.Publish(ctx, DefaultChannel, "marker").Err(); err != nil {
		t.Fatal(err)
	}
	msgs := raw.until(t, "marker")
	if len(msgs) != 2 || !strings.Contains(msgs[0], v2) {
		t.Errorf("the channel carried %q, want one message for %s and the marker", msgs, v2)
	} else if n, err := decode(testKey, DefaultChannel, msgs[0], time.Now(), time.Minute); err != nil || n.N != 3 {
		t.Errorf("the notice counts %d instances (%v); want the 3 members", n.N, err)
	}
	for _, in := range ins {
		in.waitStatus(t, ctx, "the marker", func(s Status) bool { return s.Received == 2 })
		if s := in.f.Status(); s.Rejected != 1 || s.Reconnects != 0 || s.Dropped != 0 || !s.Connected {
			t.Errorf("status %+v; want connected, the marker rejected, no reconnect or drop", s)
		}
	}
}

// Issue 15: Redis restarts while a rotation happens; the instance that
// learns it drops its publication, and the others catch up by the
// re-check after reconnecting.
func TestRedisRestartMidRotation(t *testing.T) {
	srv := startRedis(t)
	vault := newVault(t)
	opts := &Options{RecheckSpread: 100 * time.Millisecond, MaxReconnectBackoff: 200 * time.Millisecond}
	ins := fleet(t, vault, srv.Addr(), 3, opts)
	ctx := deadline(t)

	srv.stop()
	for _, in := range ins {
		in.waitStatus(t, ctx, "the lost connection", func(s Status) bool { return !s.Connected })
	}
	v2, err := vault.SetSecret("ApiKey", "value-2", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Instance 0 learns it (as from the webhook): its hook must not wait on
	// Redis, and the publication is dropped.
	start := time.Now()
	if _, err := ins[0].p.Refresh(ctx, "ApiKey"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Refresh took %v with Redis down", d)
	}
	ins[0].waitStatus(t, ctx, "the dropped publication", func(s Status) bool { return s.Dropped == 1 })
	// Refused connections, or the publish timeout if the client's own
	// dial retries outlast it on a loaded machine.
	if s := ins[0].f.Status(); !errors.Is(s.LastError, ErrUnreachable) && !errors.Is(s.LastError, ErrTimeout) || s.Published != 0 {
		t.Errorf("status after the drop: %+v; want LastError ErrUnreachable or ErrTimeout, nothing published", s)
	}
	ins[1].get(t, "value-1") // not heard of: Redis is down
	before := vault.SecretRequests("ApiKey")

	srv.restart()
	for i, in := range ins {
		in.waitStatus(t, ctx, "the re-subscription and re-check", func(s Status) bool {
			return s.Connected && s.Reconnects == 1 && s.Rechecks == 1
		})
		if i > 0 {
			in.waitRotation(t, ctx, v2)
			in.get(t, "value-2")
		}
	}
	// Instance 0's re-check reads too, on its spread: at most 3 reads.
	if n := vault.SecretRequests("ApiKey") - before; n < 2 || n > 3 {
		t.Errorf("%d reads after the restart, want 2 or 3", n)
	}
}

// Issue 15: messages from someone without the key, or replayed, or
// malformed, make no instance act; each is counted.
func TestForgedMessagesAreRejected(t *testing.T) {
	srv := startRedis(t)
	vault := newVault(t)
	var logs syncBuffer
	in := fleet(t, vault, srv.Addr(), 1, &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})[0]
	ctx := deadline(t)
	v2, err := vault.SetSecret("ApiKey", "value-2", nil) // news an accepted message would act on
	if err != nil {
		t.Fatal(err)
	}
	host := strings.ToLower(vault.Host())
	now := time.Now()
	sign := func(key []byte, channel string, n notice) string {
		msg, err := encode(key, channel, n)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	good := notice{Vault: host, Name: "ApiKey", Version: v2, TS: now.UnixMilli(), N: 1}
	badMAC := []byte(sign(testKey, DefaultChannel, good))
	badMAC[len(msgPrefix)+5] ^= 1
	stale, future, badName, oversized := good, good, good, good
	stale.TS = now.Add(-6 * time.Minute).UnixMilli()
	future.TS = now.Add(6 * time.Minute).UnixMilli()
	badName.Name = "sk_live/abc"
	oversized.Name = strings.Repeat("a", MaxMessageSize)
	forged := []string{
		sign([]byte("another key, 32 bytes or longer!"), DefaultChannel, good), // wrong key
		string(badMAC),                           // tampered
		sign(testKey, "another:channel", good),   // signed for another channel
		sign(testKey, DefaultChannel, stale),     // replayed after the window
		sign(testKey, DefaultChannel, future),    // from beyond the window
		sign(testKey, DefaultChannel, badName),   // signed, invalid name
		sign(testKey, DefaultChannel, oversized), // too long to read
		"",
		"garbage \x00\xff",
		msgPrefix + strings.Repeat("A", macLen) + ".{}",
		`{"vault":"` + host + `","name":"ApiKey","version":"` + v2 + `"}`, // unsigned
	}
	before := vault.SecretRequests("ApiKey")
	for _, m := range forged {
		if err := in.client.Publish(ctx, DefaultChannel, m).Err(); err != nil {
			t.Fatal(err)
		}
	}
	in.waitStatus(t, ctx, "the rejections", func(s Status) bool { return s.Rejected == uint64(len(forged)) })
	if s := in.f.Status(); s.Acted != 0 || s.Received != uint64(len(forged)) {
		t.Errorf("status %+v; want %d received, none acted on", s, len(forged))
	}
	if n := vault.SecretRequests("ApiKey") - before; n != 0 {
		t.Errorf("forged messages caused %d vault reads", n)
	}
	in.get(t, "value-1")
	// Logged at Warn with the reason, at most once a second, never with
	// the message.
	out := logs.String()
	if n := strings.Count(out, "redisfanout: message rejected"); n < 1 || n >= len(forged) {
		t.Errorf("%d rejection logs for %d rejections:\n%s", n, len(forged), out)
	}
	if !strings.Contains(out, "level=WARN") || strings.Contains(out, v2) || strings.Contains(out, "garbage") || strings.Contains(out, "sk_live") {
		t.Errorf("the log shows a message's contents:\n%s", out)
	}

	// The same notice, signed: acted on, so the ones above were refused
	// for what they were and not for what they said.
	if err := in.client.Publish(ctx, DefaultChannel, sign(testKey, DefaultChannel, good)).Err(); err != nil {
		t.Fatal(err)
	}
	in.waitRotation(t, ctx, v2)
	if s := in.f.Status(); s.Acted != 1 || s.Rejected != uint64(len(forged)) {
		t.Errorf("status %+v; want the signed message acted on", s)
	}
}

// Issue 15: a valid message about another vault, a secret not cached, or
// a replay of one already heard makes no read.
func TestValidMessagesThatAreNotNewsAreIgnored(t *testing.T) {
	srv := startRedis(t)
	vault := newVault(t)
	in := fleet(t, vault, srv.Addr(), 1, nil)[0]
	ctx := deadline(t)
	v2, err := vault.SetSecret("ApiKey", "value-2", nil)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.ToLower(vault.Host())
	ts := time.Now().UnixMilli()
	other := notice{Vault: "othervault.vault.azure.net", Name: "ApiKey", Version: v2, TS: ts, N: 1}
	notCached := notice{Vault: host, Name: "NotRead", Version: v2, TS: ts, N: 1}
	before := vault.SecretRequests("ApiKey")
	for i, n := range []notice{other, notCached, other} {
		msg, err := encode(testKey, DefaultChannel, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := in.client.Publish(ctx, DefaultChannel, msg).Err(); err != nil {
			t.Fatal(err)
		}
		in.waitStatus(t, ctx, "the message", func(s Status) bool { return s.Received == uint64(i+1) })
	}
	if s := in.f.Status(); s.Acted != 0 || s.Rejected != 0 {
		t.Errorf("status %+v; want nothing acted on or rejected", s)
	}
	if n := vault.SecretRequests("ApiKey") - before; n != 0 {
		t.Errorf("%d vault reads", n)
	}
	in.get(t, "value-1")
}

// Issue 15: nothing published carries a value — neither the message nor
// the claim key — when a rotation writes one.
func TestValuesNeverTravel(t *testing.T) {
	srv := startRedis(t)
	vault := newVault(t)
	ins := fleet(t, vault, srv.Addr(), 2, nil)
	raw := subscribeRaw(t, ins[0].client, DefaultChannel)
	ctx := deadline(t)

	const value = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
	sec, err := ins[0].p.Rotate(ctx, "ApiKey", value, nil)
	if err != nil {
		t.Fatal(err)
	}
	ins[1].waitRotation(t, ctx, sec.Version)
	ins[1].get(t, value)
	ins[0].waitStatus(t, ctx, "the publication", func(s Status) bool { return s.Published == 1 })
	if err := ins[0].client.Publish(ctx, DefaultChannel, "marker").Err(); err != nil {
		t.Fatal(err)
	}
	msgs := raw.until(t, "marker")
	if len(msgs) != 2 || !strings.Contains(msgs[0], sec.Version) {
		t.Fatalf("the channel carried %q; want the rotation's message and the marker", msgs)
	}
	keys, err := ins[0].client.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	var claims int
	for _, k := range keys {
		switch {
		case k == membersKey(DefaultChannel):
			ms, err := ins[0].client.ZRange(ctx, k, 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) != len(ins) {
				t.Errorf("%d members for %d instances", len(ms), len(ins))
			}
			stored = append(stored, k)
			stored = append(stored, ms...)
		default:
			v, err := ins[0].client.Get(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			claims++
			stored = append(stored, k, v)
		}
	}
	if len(keys) != 2 || claims != 1 {
		t.Errorf("Redis holds keys %q; want the one claim and the members", keys)
	}
	for _, s := range append(msgs, stored...) {
		for _, part := range []string{value, value[:12], value[len(value)-12:]} {
			if strings.Contains(s, part) {
				t.Errorf("%q carries part of the value", s)
			}
		}
	}
}

// Close ends every goroutine the FanOut started, promptly even with
// Redis down and a publication pending, and is safe to call twice.
func TestCloseEndsEveryGoroutine(t *testing.T) {
	srv := startRedis(t)
	vault := newVault(t)
	for _, down := range []bool{false, true} {
		in := fleet(t, vault, srv.Addr(), 1, nil)[0]
		ctx := deadline(t)
		ign := goleak.IgnoreCurrent()
		f, err := New(in.p, in.client, &Options{Key: testKey, Channel: "leak"})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
		if down {
			srv.stop()
			if err := f.waitFor(ctx, func(s Status) bool { return !s.Connected }); err != nil {
				t.Fatal(err)
			}
			f.onRotate(kvsecrets.RotationEvent{Vault: vault.URL(), Name: "ApiKey", NewVersion: strings.Repeat("a", 32)})
		}
		closed := make(chan struct{})
		go func() {
			f.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("Close (Redis down: %v) did not return within 5 s", down)
		}
		if err := goleak.Find(ign, ignoreClientPool); err != nil {
			t.Errorf("Redis down: %v: %v", down, err)
		}
		if err := f.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if err := f.WaitConnected(ctx); !errors.Is(err, ErrClosed) {
			t.Errorf("WaitConnected after Close = %v, want ErrClosed", err)
		}
		if f.Status().Connected {
			t.Error("connected after Close")
		}
	}
}

// The rotation hook never waits on Redis: with nothing listening, a burst
// of rotations returns at once, the queue's overflow is dropped, and
// every version is counted as dropped.
func TestRotationHookNeverBlocks(t *testing.T) {
	vault := newVault(t)
	p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Nothing listens; each publication fails at its first dial.
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconvItoa(freePort(t)), MaxRetries: -1, DialerRetries: 1})
	defer client.Close()
	f, err := New(p, client, &Options{Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := deadline(t)
	const n = 200
	start := time.Now()
	for i := range n {
		f.onRotate(kvsecrets.RotationEvent{Vault: vault.URL(), Name: "ApiKey", NewVersion: strings.Repeat("0", 28) + strconvItoa(1000+i)})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("%d rotation hooks took %v with Redis unreachable", n, d)
	}
	if err := f.waitFor(ctx, func(s Status) bool { return s.Dropped == n }); err != nil {
		t.Fatalf("%v: %+v", err, f.Status())
	}
	s := f.Status()
	if s.Published != 0 || s.Connected || !errors.Is(s.LastError, ErrUnreachable) && !errors.Is(s.LastError, ErrQueueFull) {
		t.Errorf("status %+v", s)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	vault := newVault(t)
	p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	for _, tc := range []struct {
		opts *Options
		want string
	}{
		{nil, "Options.Key is required"},
		{&Options{}, "Options.Key is 0 bytes; at least 32"},
		{&Options{Key: testKey[:31]}, "Options.Key is 31 bytes; at least 32"},
		{&Options{Key: testKey, RecheckSpread: -1}, "Options.RecheckSpread must not be negative"},
		{&Options{Key: testKey, PublishedTTL: time.Millisecond}, "PublishedTTL must be at least a second"},
		{&Options{Key: testKey, Channel: strings.Repeat("c", 300)}, "Options.Channel is 300 bytes"},
		{&Options{Key: testKey, ReadRate: -1}, "Options.ReadRate must be a positive number"},
		{&Options{Key: testKey, ReadRate: math.NaN()}, "Options.ReadRate must be a positive number"},
	} {
		f, err := New(p, client, tc.opts)
		if f != nil || err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "redisfanout: ") {
			t.Errorf("New(%+v) = %v, %v; want an error saying %q", tc.opts, f, err, tc.want)
		}
	}
	if _, err := New(nil, client, &Options{Key: testKey}); err == nil {
		t.Error("New with a nil Provider succeeded")
	}
}

// syncBuffer is a bytes.Buffer for a logger on other goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// A Redis that hangs (stopped, not dead: the connection stays open and
// silent) is noticed by the unanswered ping and replaced, and the
// subscription made when it answers again re-checks. Close returns while
// it hangs.
func TestHungRedisIsReplaced(t *testing.T) {
	srv := startRedis(t)
	vault := newVault(t)
	in := fleet(t, vault, srv.Addr(), 1, &Options{
		healthInterval: 200 * time.Millisecond, MaxReconnectBackoff: 200 * time.Millisecond, RecheckSpread: 50 * time.Millisecond,
	})[0]
	ctx := deadline(t)
	signal := func(sig syscall.Signal) {
		if err := srv.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
	}
	signal(syscall.SIGSTOP)
	in.waitStatus(t, ctx, "the hung connection given up", func(s Status) bool {
		return !s.Connected && errors.Is(s.LastError, ErrTimeout)
	})
	signal(syscall.SIGCONT)
	in.waitStatus(t, ctx, "the new subscription", func(s Status) bool {
		return s.Connected && s.Reconnects == 1 && s.Rechecks == 1
	})

	signal(syscall.SIGSTOP)
	defer signal(syscall.SIGCONT)
	closed := make(chan struct{})
	go func() {
		in.f.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10 s with Redis hung")
	}
}
