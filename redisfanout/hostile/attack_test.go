package hostile

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// fleet is a vault, a Redis, and instances caching "Api".
type fleet struct {
	t   *testing.T
	r   *redisProc
	srv *kvtest.Server
	raw *redis.Client
	sn  *sniffer
	lb  *logBuf
	ins []*instance
}

func newFleet(t *testing.T, n int, fo redisfanout.Options) *fleet {
	f := &fleet{t: t, r: startRedis(t), srv: newVault(t), lb: &logBuf{}}
	f.raw = rawClient(t, f.r)
	f.sn = startSniffer(t, f.r)
	f.srv.SetSecret("Api", secretValue, nil)
	f.srv.SetSecret("Other", secretValue, nil)
	for i := 0; i < n; i++ {
		f.add(fo)
	}
	waitConnected(t, f.ins...)
	return f
}

func (f *fleet) add(fo redisfanout.Options) *instance {
	p := newProvider(f.t, f.srv, &kvsecrets.Options{Logger: f.lb.logger(), EventCoalesceWindow: 50 * time.Millisecond})
	mustGet(f.t, p, "Api")
	mustGet(f.t, p, "Other")
	fo.Logger = f.lb.logger()
	in := newFan(f.t, p, f.r, &fo, nil)
	f.ins = append(f.ins, in)
	return in
}

// rotate rotates name on instance 0 and waits for every instance to serve it,
// returning the message published for it.
func (f *fleet) rotate(name string) (kvsecrets.Secret, string) {
	f.t.Helper()
	before := len(f.sn.all())
	s, err := f.ins[0].p.Rotate(context.Background(), name, secretValue+"-"+name+time.Now().String(), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, in := range f.ins {
		eventually(f.t, 10*time.Second, "convergence", func() bool { return mustGet(f.t, in.p, name).Version == s.Version })
	}
	var msg string
	eventually(f.t, 5*time.Second, "the message", func() bool {
		for _, m := range f.sn.all()[before:] {
			if strings.Contains(m.Payload, s.Version) {
				msg = m.Payload
				return true
			}
		}
		return false
	})
	return s, msg
}

func (f *fleet) publish(channel, msg string) {
	if err := f.raw.Publish(context.Background(), channel, msg).Err(); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fleet) received(in *instance) uint64 { return in.fan.Status().Received }

// TestForgedAndTamperedMessagesRejected: without the key, nothing a Redis
// user publishes makes an instance read the vault.
func TestForgedAndTamperedMessagesRejected(t *testing.T) {
	f := newFleet(t, 2, redisfanout.Options{ReadRate: 1000})
	_, m1 := f.rotate("Api")
	// The vault moves on behind the fleet's back: any accepted notice would read it.
	f.srv.SetSecret("Api", secretValue+"-behind", nil)
	f.srv.SetSecret("Other", secretValue+"-behind", nil)
	f.srv.ResetCounts()
	parts := strings.SplitN(m1, ".", 3)
	if len(parts) != 3 {
		t.Fatalf("unexpected message shape %q", m1)
	}
	sig, body := parts[1], parts[2]
	nextV, _ := f.srv.Versions("Api")
	otherV, _ := f.srv.Versions("Other")
	ts := fmt.Sprint(time.Now().UnixMilli())
	forged := []string{
		"", "kvs1", "kvs1..", "kvs1.." + body, "kvs1." + strings.Repeat("A", 43) + "." + body,
		`{"vault":"kvtest.vault.azure.net","name":"Api","version":"` + nextV[0] + `","ts":` + ts + `}`,
		"kvs1." + sig + "." + strings.Replace(body, `"Api"`, `"Other"`, 1),
		"kvs1." + sig + "." + strings.Replace(body, `"version":"`, `"version":"`+otherV[0][:0], 1) + " ",
		"kvs1." + sig + "." + body[:strings.Index(body, `"version":"`)+11] + nextV[0] + body[strings.Index(body, `"version":"`)+11+32:],
		"kvs1." + sig + "." + body[:strings.Index(body, `"ts":`)] + `"ts":` + ts + "}",
		"kvs1." + sig[:len(sig)-1] + flip(sig[len(sig)-1:]) + "." + body,
		"KVS1." + sig + "." + body,
		"kvs1." + sig + "." + body + "\n",
		"kvs1." + sig + "==." + body,
		"kvs2." + sig + "." + body,
		"kvs1." + sig + "." + body + `{"vault":"kvtest.vault.azure.net","name":"Other","version":"` + otherV[0] + `"}`,
		"kvs1." + sig + "." + strings.Repeat(" ", 2000) + body,
		strings.Repeat("kvs1."+sig+"."+body, 10),
		"kvs1.ｓｉｇ.{\"name\":\"Ａｐｉ\",\"vault\":\"kvtest.vault.azure.net\",\"version\":\"" + nextV[0] + "\",\"ts\":" + ts + "}",
		"kvs1.\xff\xfe\x00." + body,
		"\x00\x01\x02FORGEDMARK" + strings.Repeat("\xff", 900),
		"kvs1." + sig + "." + strings.Repeat("x", 1<<20) + "FORGEDMARK",
	}
	f.lb.Reset()
	for i := range forged {
		forged[i] = strings.ReplaceAll(forged[i], "FORGEDMARK", "FORGEDMARK")
		if !strings.Contains(forged[i], "FORGEDMARK") {
			forged[i] += "FORGEDMARK"[:0]
		}
	}
	b := f.ins[1]
	eventually(t, 5*time.Second, "the rotation's message handled", func() bool { return f.received(b) >= 1 })
	recv0, rej0, act0 := b.fan.Status().Received, b.fan.Status().Rejected, b.fan.Status().Acted
	for _, m := range forged {
		f.publish("kvsecrets:versions", m)
	}
	eventually(t, 5*time.Second, "every forged message received", func() bool { return f.received(b)-recv0 >= uint64(len(forged)) })
	time.Sleep(300 * time.Millisecond) // checking that nothing happens
	st := b.fan.Status()
	if st.Rejected-rej0 != uint64(len(forged)) {
		t.Errorf("rejected %d of %d forged messages", st.Rejected-rej0, len(forged))
	}
	if st.Acted != act0 {
		t.Errorf("acted on %d forged messages", st.Acted-act0)
	}
	if n := len(f.srv.RequestLog()); n != 0 {
		t.Errorf("forged messages caused %d vault requests", n)
	}
	if strings.Contains(f.lb.String(), "FORGEDMARK") || strings.Contains(f.lb.String(), sig) {
		t.Errorf("logs repeat forged contents")
	}
	if st.Connected != true {
		t.Errorf("the forged messages disconnected the FanOut: %+v", st)
	}
	t.Logf("status after forgeries: %+v", st)
}

func flip(s string) string {
	if s == "A" {
		return "B"
	}
	return "A"
}

// TestReplayWithinWindowIgnored: replays of a captured, valid message — to
// instances that heard it and to one that did not — cost at most one read.
func TestReplayWithinWindowIgnored(t *testing.T) {
	f := newFleet(t, 2, redisfanout.Options{ReadRate: 1000})
	_, m1 := f.rotate("Api")
	f.rotate("Api")                                    // the fleet is now past m1's version
	late := f.add(redisfanout.Options{ReadRate: 1000}) // did not hear m1; serves the latest
	waitConnected(t, late)
	f.srv.ResetCounts()
	r0 := make([]uint64, len(f.ins))
	for i, in := range f.ins {
		r0[i] = f.received(in)
	}
	const N = 500
	for i := 0; i < N; i++ {
		f.publish("kvsecrets:versions", m1)
	}
	for i, in := range f.ins {
		eventually(t, 10*time.Second, "replays received", func() bool { return f.received(in)-r0[i] >= N })
	}
	time.Sleep(300 * time.Millisecond) // let any read planned land
	n := getsOf(f.srv, "Api")
	t.Logf("%d reads after %d replays to %d instances", n, N, len(f.ins))
	if n > 1 {
		t.Errorf("%d replays of a valid message made %d vault reads; want at most 1 (the instance that had not heard it)", N, n)
	}
	for i, in := range f.ins {
		t.Logf("instance %d: %+v", i, in.fan.Status())
	}
}

// TestReplayOutsideWindowRejected and across channels.
func TestReplayOutsideWindowAndOtherChannelRejected(t *testing.T) {
	const window = time.Second
	f := newFleet(t, 2, redisfanout.Options{ReplayWindow: window, ReadRate: 1000})
	// A Provider that caches the old version but is not yet listening.
	late := newProvider(t, f.srv, &kvsecrets.Options{EventCoalesceWindow: time.Millisecond})
	mustGet(t, late, "Api")
	_, m1 := f.rotate("Api")
	// Another fleet with the same key on another channel, caching the old version.
	otherP := newProvider(t, f.srv, nil)
	otherP.Notify(kvsecrets.Notice{}) // no-op
	f.srv.SetSecret("Api", secretValue+"-x", nil)
	mustGet(t, otherP, "Api")
	other := newFan(t, otherP, f.r, &redisfanout.Options{Channel: "fleetB", ReplayWindow: time.Hour}, nil)
	waitConnected(t, other)
	f.srv.ResetCounts()
	f.publish("fleetB", m1)
	f.publish("fleetB", strings.Replace(m1, "kvsecrets:versions", "fleetB", -1))
	eventually(t, 5*time.Second, "cross-channel replay received", func() bool { return other.fan.Status().Received >= 2 })
	if st := other.fan.Status(); st.Rejected != 2 || st.Acted != 0 {
		t.Errorf("cross-channel replay: %+v", st)
	}
	time.Sleep(window + 500*time.Millisecond) // real time must pass the replay window
	in := newFan(t, late, f.r, &redisfanout.Options{ReplayWindow: window}, nil)
	waitConnected(t, in)
	f.publish("kvsecrets:versions", m1)
	eventually(t, 5*time.Second, "stale replay received", func() bool { return in.fan.Status().Received >= 1 })
	time.Sleep(200 * time.Millisecond)
	if st := in.fan.Status(); st.Rejected != 1 || st.Acted != 0 {
		t.Errorf("replay outside the window: %+v", st)
	}
	if n := len(f.srv.RequestLog()); n != 0 {
		t.Errorf("%d vault requests from replays", n)
	}
}

// TestGarbageFloodDoesNotDelayRealRotation: 10,000 forged messages, then a
// real rotation reaches the other instance promptly; Warn logs are bounded.
func TestGarbageFloodDoesNotDelayRealRotation(t *testing.T) {
	f := newFleet(t, 2, redisfanout.Options{ReadRate: 1000})
	f.lb.Reset()
	ctx := context.Background()
	start := time.Now()
	const N = 10000
	pipe := f.raw.Pipeline()
	for i := 0; i < N; i++ {
		pipe.Publish(ctx, "kvsecrets:versions", fmt.Sprintf("kvs1.AAAA.{\"name\":\"FORGEDMARK%d\"}", i))
		if i%1000 == 999 {
			pipe.Exec(ctx)
		}
	}
	pipe.Exec(ctx)
	t0 := time.Now()
	f.rotate("Api")
	conv := time.Since(t0)
	t.Logf("flood published in %v; rotation converged %v after", t0.Sub(start), conv)
	if conv > 3*time.Second {
		t.Errorf("a garbage flood delayed a real rotation by %v", conv)
	}
	eventually(t, 30*time.Second, "flood received", func() bool { return f.ins[1].fan.Status().Received >= N })
	logs := f.lb.String()
	warns := strings.Count(logs, "level=WARN")
	el := time.Since(start)
	t.Logf("%d Warn lines in %v", warns, el)
	if warns > int(el/time.Second)*2+4 {
		t.Errorf("%d Warn lines in %v: not rate-limited", warns, el)
	}
	if strings.Contains(logs, "FORGEDMARK") {
		t.Errorf("logs contain forged contents")
	}
}

// TestReplayFloodDoesNotDelayRealRotation: replays of a valid message (not
// news) must not take slices of the read schedule from real notices.
func TestReplayFloodDoesNotDelayRealRotation(t *testing.T) {
	f := newFleet(t, 2, redisfanout.Options{ReadRate: 100}) // slice = 2/100 s = 20 ms
	_, m1 := f.rotate("Api")
	ctx := context.Background()
	const N = 2000 // 2000 × 20 ms = 40 s if each replay took a slice
	pipe := f.raw.Pipeline()
	for i := 0; i < N; i++ {
		pipe.Publish(ctx, "kvsecrets:versions", m1)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "replays received", func() bool { return f.ins[1].fan.Status().Received >= N })
	t0 := time.Now()
	f.rotate("Other")
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("replays delayed a real rotation by %v", d)
	}
}

// TestSubscriberInflationDelaysConvergence: a Redis user with no key opens
// idle subscriptions to the channel; PUBSUB NUMSUB counts them as instances
// and every notice's slice grows with them.
func TestSubscriberInflationDelaysConvergence(t *testing.T) {
	f := newFleet(t, 2, redisfanout.Options{ReadRate: 100})
	ctx := context.Background()
	var fakes []*redis.PubSub
	for i := 0; i < 400; i++ {
		ps := f.raw.Subscribe(ctx, "kvsecrets:versions")
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		fakes = append(fakes, ps)
	}
	defer func() {
		for _, ps := range fakes {
			ps.Close()
		}
	}()
	// The publisher counts the fleet when it publishes, from members
	// announced under the key: subscribers do not count, however long
	// they have been there. (The first version counted PUBSUB NUMSUB
	// every 15 s; this test then waited 16 s for the count.)
	t0 := time.Now()
	f.rotate("Api")
	d := time.Since(t0)
	t.Logf("2 real instances, 400 idle subscribers, ReadRate 100: converged in %v", d)
	if d > time.Second {
		t.Errorf("idle subscribers (no key needed) stretched a 2-instance fleet's convergence to %v (2/ReadRate = 20ms)", d)
	}
}
