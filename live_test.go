package kvsecrets

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

type liveDB struct {
	Host     string `json:"host"`
	Password string `json:"password"`
}

type liveConfig struct {
	Key    string `keyvault:"ApiKey"`
	DB     liveDB `keyvault:"DbConfig,json"`
	Sentry string `keyvault:"SentryDsn,optional"`
}

type liveChanges struct {
	mu       sync.Mutex
	old, new []*liveConfig
	errs     []error
}

func (c *liveChanges) opts() *LiveOptions[liveConfig] {
	return &LiveOptions[liveConfig]{
		OnChange: func(o, n *liveConfig) { c.mu.Lock(); c.old, c.new = append(c.old, o), append(c.new, n); c.mu.Unlock() },
		OnError:  func(err error) { c.mu.Lock(); c.errs = append(c.errs, err); c.mu.Unlock() },
	}
}

func (c *liveChanges) counts() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.new), len(c.errs)
}

func TestLiveFollowsRotationsAndKeepsTheLastGoodSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		v.set("DbConfig", `{"host":"db1","password":"pw-1"}`)
		logs := &logRecorder{}
		p := v.newProvider(t, &Options{TTL: time.Hour, Logger: slog.New(logs)})
		ch := &liveChanges{}
		live, err := LoadLive(context.Background(), p, ch.opts())
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		first := live.Current()
		if first.Key != "key-1" || first.DB.Password != "pw-1" {
			t.Fatalf("%+v", *first)
		}

		// A rotation of one secret: a new snapshot, the old one untouched.
		v.set("ApiKey", "key-2")
		if _, err := p.Refresh(t.Context(), "ApiKey"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		cur := live.Current()
		if cur.Key != "key-2" || cur.DB.Password != "pw-1" || first.Key != "key-1" {
			t.Fatalf("after a rotation: current %+v, first %+v", *cur, *first)
		}
		if n, _ := ch.counts(); n != 1 || ch.old[0] != first || ch.new[0] != cur {
			t.Fatalf("OnChange: %d calls", n)
		}

		// A new JSON value that does not decode: the previous snapshot stays.
		v.set("DbConfig", `{"host":"db2","password":"`+knownValue+`",`)
		if _, err := p.Refresh(t.Context(), "DbConfig"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if live.Current() != cur || live.Err() == nil {
			t.Fatalf("a failed rebuild: current %+v, Err %v", *live.Current(), live.Err())
		}
		if _, e := ch.counts(); e != 1 || !strings.Contains(ch.errs[0].Error(), "DbConfig") {
			t.Fatalf("OnError: %v", ch.errs)
		}
		if logs.count(slog.LevelWarn, "live configuration not rebuilt") != 1 {
			t.Fatal("no Warn for the failed rebuild")
		}
		logs.assertNoValue(t, "hunter2")
		for _, s := range []string{live.Err().Error(), live.String()} {
			if strings.Contains(s, "hunter2") {
				t.Fatalf("the value leaked: %s", s)
			}
		}
		// Other rotations do not retry the same broken version for nothing:
		// a background refresh of the same versions changes nothing.
		time.Sleep(time.Hour)
		if n, e := ch.counts(); n != 1 || e != 1 {
			t.Fatalf("refreshes of the same versions rebuilt: %d changes, %d errors", n, e)
		}
		// A fixed value rebuilds, and the error clears.
		v.set("DbConfig", `{"host":"db3","password":"pw-3"}`)
		p.Refresh(t.Context(), "DbConfig")
		synctest.Wait()
		if got := live.Current(); got.DB.Host != "db3" || got.Key != "key-2" || live.Err() != nil {
			t.Fatalf("after a fix: %+v, %v", *got, live.Err())
		}
	})
}

// TestLiveThroughAnOutageWithNoReaders: nobody calls Get; the secrets stay
// refreshed, an outage past MaxStale leaves the snapshot in place, and the
// rotation made meanwhile arrives once the vault is back.
func TestLiveThroughAnOutageWithNoReaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		v.set("DbConfig", `{"host":"db1"}`)
		p := v.newProvider(t, &Options{TTL: 10 * time.Minute, MaxStale: time.Hour})
		ch := &liveChanges{}
		live, err := LoadLive(context.Background(), p, ch.opts())
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Hour) // 15 TTLs without a Get
		if d := p.Stats().IdleDrops; d != 0 {
			t.Fatalf("secrets of a live configuration were dropped for idleness: %d", d)
		}
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })
		v.set("ApiKey", "key-2")
		time.Sleep(3 * time.Hour)
		if got := live.Current(); got.Key != "key-1" {
			t.Fatalf("during the outage: %+v", *got)
		}
		if n, e := ch.counts(); n != 0 || e != 0 {
			t.Fatalf("during the outage: %d changes, %d errors", n, e)
		}
		v.setFail(nil)
		time.Sleep(5 * time.Minute) // the background retries' backoff is at most 2 min
		if got := live.Current(); got.Key != "key-2" {
			t.Fatalf("after the outage: %+v", *got)
		}
		live.Close()
		live.Close()
	})
}

func TestLiveEndsWithTheProvider(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		v.set("DbConfig", `{}`)
		p := v.newProvider(t, nil)
		var live *Live[liveConfig]
		closeInside := &LiveOptions[liveConfig]{OnChange: func(_, _ *liveConfig) { live.Close() }}
		live, err := LoadLive(context.Background(), p, closeInside)
		if err != nil {
			t.Fatal(err)
		}
		v.set("ApiKey", "key-2")
		p.Refresh(t.Context(), "ApiKey") // OnChange closes the Live from inside: no deadlock
		synctest.Wait()
		if live.Current().Key != "key-2" {
			t.Fatal(live.Current())
		}
		v.set("ApiKey", "key-3")
		p.Refresh(t.Context(), "ApiKey")
		synctest.Wait()
		if live.Current().Key != "key-2" {
			t.Fatal("a closed Live still follows")
		}

		other, err := LoadLive[liveConfig](context.Background(), p, nil)
		if err != nil {
			t.Fatal(err)
		}
		p.Close() // waits for other's goroutine
		if other.Current().Key != "key-3" {
			t.Fatal(other.Current())
		}
		if _, err := LoadLive[liveConfig](context.Background(), p, nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("LoadLive after Close: %v", err)
		}
	})
}

func TestLiveReportsMisuseAndFailuresAsLoad(t *testing.T) {
	v := newFakeVault()
	v.set("ApiKey", "key-1")
	p := v.newProvider(t, nil)
	if _, err := LoadLive[int](context.Background(), p, nil); !errors.Is(err, ErrLoadMisuse) {
		t.Fatalf("LoadLive[int]: %v", err)
	}
	_, err := LoadLive[liveConfig](context.Background(), p, nil)
	var cfg liveConfig
	lerr := p.Load(context.Background(), &cfg)
	if err == nil || lerr == nil || err.Error() != lerr.Error() {
		t.Fatalf("LoadLive: %v; Load: %v", err, lerr)
	}
}
