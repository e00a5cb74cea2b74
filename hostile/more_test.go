package hostile_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

type Inner struct {
	Token string `keyvault:"Token"`
}
type ImmCfg struct {
	M     map[string]string `keyvault:"M,json"`
	S     DBConf            `keyvault:"S,json"`
	P     *DBConf           `keyvault:"P,json"`
	L     []int             `keyvault:"L,json"`
	Inner *Inner            // untagged pointer to struct: walked
	Key   []byte            `keyvault:"Key"`
}

// Snapshots are immutable and each is a new T: a rebuild must not write into the
// previous snapshot (maps merged by json.Unmarshal, shared pointers, walked *struct),
// and fields missing from the new JSON must not survive from the old one.
func TestLiveSnapshotsAreIndependent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "M", `{"a":"1","b":"2"}`)
		set(t, v, "S", `{"Host":"h0","Port":1}`)
		set(t, v, "P", `{"Host":"p0","Port":1}`)
		set(t, v, "L", `[1,2,3]`)
		set(t, v, "Token", "t0")
		set(t, v, "Key", "k0")
		live, err := kvsecrets.LoadLive[ImmCfg](t.Context(), p, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		old := live.Current()
		oldCopy := fmt.Sprintf("%v %+v %+v %v %+v %s", old.M, old.S, *old.P, old.L, *old.Inner, old.Key)
		set(t, v, "M", `{"a":"3"}`)
		set(t, v, "S", `{"Host":"h1"}`)
		set(t, v, "P", `{"Host":"p1"}`)
		set(t, v, "L", `[9]`)
		set(t, v, "Token", "t1")
		set(t, v, "Key", "k1")
		for _, n := range []string{"M", "S", "P", "L", "Token", "Key"} {
			if _, err := p.Refresh(t.Context(), n); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		cur := live.Current()
		if cur == old {
			t.Fatalf("no rebuild")
		}
		if now := fmt.Sprintf("%v %+v %+v %v %+v %s", old.M, old.S, *old.P, old.L, *old.Inner, old.Key); now != oldCopy {
			t.Errorf("the old snapshot was modified by a rebuild:\n was %s\n now %s", oldCopy, now)
		}
		if len(cur.M) != 1 || cur.M["a"] != "3" {
			t.Errorf("new M = %v, want map[a:3]", cur.M)
		}
		if cur.S.Port != 0 || cur.P.Port != 0 {
			t.Errorf("fields absent from the new JSON survived: S %+v, P %+v", cur.S, *cur.P)
		}
		if fmt.Sprint(cur.L) != "[9]" || cur.Inner.Token != "t1" || string(cur.Key) != "k1" {
			t.Errorf("new snapshot %v %+v %s", cur.L, *cur.Inner, cur.Key)
		}
		if cur.Inner == old.Inner || cur.P == old.P {
			t.Errorf("snapshots share pointers")
		}
	})
}

// Watchers that start and stop leave nothing behind: 50,000 break-early and
// 50,000 cancelled-while-waiting watches.
func TestWatchRegistrationsDoNotAccumulate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a0")
		p.Get(t.Context(), "A")
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		for range 50000 {
			for range p.Watch(t.Context(), "A") {
				break
			}
		}
		for i := 0; i < 50000; i += 1000 {
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{}, 1000)
			for range 1000 {
				go func() {
					for range p.Watch(ctx, "A") {
					}
					done <- struct{}{}
				}()
			}
			synctest.Wait()
			cancel()
			for range 1000 {
				<-done
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		if grow := int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc); grow > 2<<20 {
			t.Errorf("100,000 ended watches left the heap %d bytes larger", grow)
		}
		// and a rotation afterwards is cheap and reaches a new watcher
		p.Rotate(t.Context(), "A", "a1", nil)
		for s, err := range p.Watch(t.Context(), "A") {
			if err != nil || s.Value() != "a1" {
				t.Errorf("watch after: %v %v", s, err)
			}
			break
		}
	})
}

// Vault down when the watch starts (nothing cached): the first read fails; nobody else
// reads the secret; when the vault comes back the watcher must get the value.
func TestWatchFirstReadFailsThenVaultReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a0")
		v.FailFor(10*time.Minute, kvtest.ServiceUnavailable)
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		defer func() { cancel(); <-done }()
		watchInto(ctx, p.Watch(ctx, "A"), r, done)
		synctest.Wait()
		time.Sleep(time.Minute)
		synctest.Wait()
		if g := r.all(); len(g) != 1 || !errors.Is(g[0].err, kvsecrets.ErrUnavailable) {
			t.Errorf("during the outage: %+v", g)
		}
		time.Sleep(20 * time.Minute) // outage over 10 minutes ago
		synctest.Wait()
		if r.last().val != "a0" {
			t.Errorf("10 minutes after the vault came back, the watcher has %+v (requests %d)", r.all(), v.SecretRequests("A"))
		}
	})
}

// Same for a cold Handle and for readiness: vault down at start-up; probes every 10s;
// ready within a few probes of the vault coming back.
func TestReadinessAfterStartupOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a0")
		v.FailFor(5*time.Minute, kvtest.ServiceUnavailable)
		h := p.HealthHandler("A")
		var readyAt time.Time
		start := time.Now()
		for range 60 { // 10 minutes of probes
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
			if rec.Code == 200 && readyAt.IsZero() {
				readyAt = time.Now()
			}
			time.Sleep(10 * time.Second)
		}
		if readyAt.IsZero() || readyAt.Sub(start) > 5*time.Minute+time.Minute {
			t.Errorf("vault back at +5m; probes every 10s; ready at %v (zero: never); status %+v", readyAt.Sub(start), p.Status("A"))
		}
	})
}

// A disabled secret watched for 10 minutes: one error, not one per NegativeTTL.
func TestWatchRevokedYieldsOncePerChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a0")
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		watchInto(ctx, p.Watch(ctx, "A"), r, done)
		synctest.Wait()
		v.SetEnabled("A", "", false)
		p.Refresh(t.Context(), "A")
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if g := r.all(); len(g) != 2 {
			t.Errorf("disabled for 10 minutes: %d yields %+v", len(g), g)
		}
		v.FailSecret("A", kvtest.ForbiddenByRbac) // a different reason
		time.Sleep(time.Minute)
		synctest.Wait()
		t.Logf("yields %+v", r.all())
		cancel()
		<-done
	})
}

// Close from OnError, and OnChange's old is the last successfully built snapshot.
func TestLiveCloseFromOnError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vv, p := liveEnv(t, nil)
		var live *kvsecrets.Live[LiveCfg]
		ready := make(chan struct{})
		var err error
		live, err = kvsecrets.LoadLive(t.Context(), p, &kvsecrets.LiveOptions[LiveCfg]{
			OnError: func(error) { <-ready; live.Close() },
		})
		if err != nil {
			t.Fatal(err)
		}
		close(ready)
		set(t, vv.Server, "Db", `{`)
		p.Refresh(t.Context(), "Db")
		synctest.Wait()
		p.Rotate(t.Context(), "A", "a1", nil)
		synctest.Wait()
		if live.Current().A != "a0" {
			t.Errorf("closed Live still follows: %+v", *live.Current())
		}
	})
}
