package hostile

import (
	"context"
	"errors"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// TestRedisRestartRechecksOnce: kill -9 and restart Redis on the same port;
// every FanOut resubscribes, re-reads each cached secret once, and a rotation
// dropped during the outage reaches the fleet through the re-check.
func TestRedisRestartRechecksOnce(t *testing.T) {
	f := newFleet(t, 3, redisfanout.Options{ReadRate: 1000, RecheckSpread: 300 * time.Millisecond, MaxReconnectBackoff: 200 * time.Millisecond})
	f.r.kill()
	for i, in := range f.ins {
		eventually(t, 10*time.Second, "Connected=false", func() bool { return !in.fan.Status().Connected })
		_ = i
	}
	// Rotation during the outage: publication fails, the hook must not block.
	t0 := time.Now()
	s, err := f.ins[0].p.Rotate(context.Background(), "Api", secretValue+"-outage", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Rotate took %v with Redis down", d)
	}
	eventually(t, 10*time.Second, "Dropped", func() bool { return f.ins[0].fan.Status().Dropped >= 1 })
	st := f.ins[0].fan.Status()
	// Unreachable, or timed out if the publication began as the
	// connection went: either way a classified Redis failure.
	if !errors.Is(st.LastError, redisfanout.ErrUnreachable) && !errors.Is(st.LastError, redisfanout.ErrTimeout) {
		t.Errorf("LastError %v, want ErrUnreachable or ErrTimeout", st.LastError)
	}
	f.srv.ResetCounts()
	f.r.start()
	waitConnected(t, f.ins...)
	for _, in := range f.ins {
		eventually(t, 10*time.Second, "converged through the re-check", func() bool { return mustGet(t, in.p, "Api").Version == s.Version })
	}
	time.Sleep(time.Second) // any second re-check would show
	for i, in := range f.ins {
		st := in.fan.Status()
		t.Logf("instance %d: %+v", i, st)
		if st.Rechecks != 1 {
			t.Errorf("instance %d: %d re-checks after one restart, want 1", i, st.Rechecks)
		}
		if st.Reconnects < 1 || !st.Connected {
			t.Errorf("instance %d status after restart: %+v", i, st)
		}
	}
	// Each of 3 instances re-reads 2 secrets once: 6 GETs, not more.
	if n := getsOf(f.srv, "Api") + getsOf(f.srv, "Other"); n > 6 {
		t.Errorf("%d reads after a restart of a 3-instance fleet caching 2 secrets, want ≤ 6", n)
	}
	// And the fan-out works again.
	f.rotate("Other")
}

// TestHungRedis: SIGSTOP the server; Rotate's hook does not block, the queue
// overflows into Dropped/ErrQueueFull, and Close returns promptly.
func TestHungRedis(t *testing.T) {
	r := startRedis(t)
	srv := newVault(t)
	srv.SetSecret("Api", secretValue, nil)
	p := newProvider(t, srv, nil)
	mustGet(t, p, "Api")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	fan, err := redisfanout.New(p, rdb, &redisfanout.Options{Key: hmacKey, PublishTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fan.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	r.signal(syscall.SIGSTOP)
	defer r.signal(syscall.SIGCONT)
	t0 := time.Now()
	for i := 0; i < 100; i++ {
		if _, err := p.Rotate(context.Background(), "Api", secretValue+"-hung", nil); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("100 Rotates took %v with Redis hung", d)
	}
	eventually(t, 5*time.Second, "queue full", func() bool {
		return errors.Is(fan.Status().LastError, redisfanout.ErrQueueFull) || fan.Status().Dropped > 30
	})
	st := fan.Status()
	t.Logf("status with Redis hung: %+v", st)
	t0 = time.Now()
	fan.Close()
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("FanOut.Close took %v with Redis hung (PublishTimeout 300ms, ContextTimeoutEnabled)", d)
	}
	t0 = time.Now()
	p.Close()
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Provider.Close took %v", d)
	}
	if err := fan.WaitConnected(context.Background()); !errors.Is(err, redisfanout.ErrClosed) {
		t.Errorf("WaitConnected after Close = %v", err)
	}
	r.signal(syscall.SIGCONT)
}

// TestOnePublicationPerVersionFleetWide: 6 instances each discover the same
// external version by themselves (Refresh at once): one message in total.
func TestOnePublicationPerVersionFleetWide(t *testing.T) {
	f := newFleet(t, 6, redisfanout.Options{ReadRate: 1000})
	before := len(f.sn.all())
	v, _ := f.srv.SetSecret("Api", secretValue+"-ext", nil)
	start := make(chan struct{})
	done := make(chan struct{})
	for _, in := range f.ins {
		go func(in *instance) {
			<-start
			in.p.Refresh(context.Background(), "Api")
			done <- struct{}{}
		}(in)
	}
	close(start)
	for range f.ins {
		<-done
	}
	time.Sleep(500 * time.Millisecond) // let every hook's publication happen
	msgs := 0
	for _, m := range f.sn.all()[before:] {
		if m.Channel == "kvsecrets:versions" {
			msgs++
		}
	}
	var pub, sup uint64
	for _, in := range f.ins {
		pub += in.fan.Status().Published
		sup += in.fan.Status().Suppressed
	}
	t.Logf("version %s: %d messages, Published %d, Suppressed %d", v, msgs, pub, sup)
	if msgs != 1 || pub != 1 {
		t.Errorf("%d messages / %d publications for one version across 6 instances, want 1", msgs, pub)
	}
	// Rotate through one instance: still one message, no echo.
	before = len(f.sn.all())
	f.rotate("Other")
	time.Sleep(500 * time.Millisecond)
	if n := len(f.sn.all()) - before; n != 1 {
		t.Errorf("Rotate on one of 6 instances: %d messages, want 1", n)
	}
}

// TestPreclaimGuessesDoNotSuppress: a Redis user sets likely claim keys
// for a version it knows (versions are not secret); the publication happens.
func TestPreclaimGuessesDoNotSuppress(t *testing.T) {
	f := newFleet(t, 2, redisfanout.Options{ReadRate: 1000})
	v, _ := f.srv.SetSecret("Api", secretValue+"-pre", nil)
	ctx := context.Background()
	for _, suffix := range []string{v, "Api/" + v, "kvtest.vault.azure.net/Api/" + v, "kvtest.vault.azure.net|Api|" + v, v[:32]} {
		f.raw.Set(ctx, "kvsecrets:versions:published:"+suffix, "1", time.Hour)
	}
	// Also fill the claim-key space's prefix with junk of every type.
	f.raw.HSet(ctx, "kvsecrets:versions:published:", "x", "y")
	f.raw.LPush(ctx, "kvsecrets:versions", "x")
	f.ins[0].p.Refresh(ctx, "Api")
	eventually(t, 5*time.Second, "instance 1 hears the version", func() bool { return mustGet(t, f.ins[1].p, "Api").Version == v })
}

// TestReadRatePacing: 50 instances, ReadRate 100. One rotation converges in
// about 50/100 s with the reads spread; 10 rotations at once queue.
func TestReadRatePacing(t *testing.T) {
	const N, rate = 50, 100.0
	f := newFleet(t, N, redisfanout.Options{ReadRate: rate})
	f.srv.ResetCounts()
	t0 := time.Now()
	s, _ := f.rotate("Api")
	conv := time.Since(t0)
	ts := getTimes(f.srv, "Api")
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	t.Logf("one rotation: %d reads, converged in %v, reads from +%v to +%v", len(ts), conv, ts[0].Sub(t0), ts[len(ts)-1].Sub(t0))
	if conv > time.Duration(float64(N)/rate*float64(time.Second))+time.Second {
		t.Errorf("one rotation took %v to reach %d instances at ReadRate %v", conv, N, rate)
	}
	if ts[len(ts)-1].Sub(ts[0]) < 150*time.Millisecond {
		t.Errorf("reads not paced: %d within %v", len(ts), ts[len(ts)-1].Sub(ts[0]))
	}
	_ = s
	// Ten rotations at once.
	names := []string{}
	for i := 0; i < 10; i++ {
		n := "Q" + hex8(uint32(i))
		f.srv.SetSecret(n, secretValue, nil)
		for _, in := range f.ins {
			mustGet(t, in.p, n)
		}
		names = append(names, n)
	}
	f.srv.ResetCounts()
	t0 = time.Now()
	var vers []string
	for _, n := range names {
		s, err := f.ins[0].p.Rotate(context.Background(), n, secretValue+"-q", nil)
		if err != nil {
			t.Fatal(err)
		}
		vers = append(vers, s.Version)
	}
	for i, n := range names {
		for _, in := range f.ins {
			eventually(t, 30*time.Second, "convergence of 10 rotations", func() bool { return mustGet(t, in.p, n).Version == vers[i] })
		}
	}
	conv = time.Since(t0)
	all := getTimes(f.srv, "")
	sort.Slice(all, func(i, j int) bool { return all[i].Before(all[j]) })
	worst := 0
	for i := range all {
		j := i
		for j < len(all) && all[j].Sub(all[i]) < time.Second {
			j++
		}
		worst = max(worst, j-i)
	}
	hist := make([]int, int(conv/(250*time.Millisecond))+2)
	for _, x := range all {
		if b := int(x.Sub(t0) / (250 * time.Millisecond)); b >= 0 && b < len(hist) {
			hist[b]++
		}
	}
	t.Logf("reads per 250ms after the rotations: %v", hist)
	t.Logf("10 rotations: %d reads over %v, busiest second %d reads (ReadRate %v)", len(all), conv, worst, rate)
	if worst > int(rate*1.3) {
		t.Errorf("busiest second had %d reads, ReadRate %v", worst, rate)
	}
	if conv < 3*time.Second {
		t.Errorf("10 rotations × 50 instances converged in %v: not queued at ReadRate %v (expect ~5s)", conv, rate)
	}
}

var _ = kvsecrets.Notice{}
