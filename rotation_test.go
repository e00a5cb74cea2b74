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

// logRecorder is a slog.Handler that keeps every record, for tests that
// check what is logged (and that no value is).
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// count returns how many records at level have a message containing msg.
func (l *logRecorder) count(level slog.Level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Level == level && strings.Contains(r.Message, msg) {
			n++
		}
	}
	return n
}

func mustGet(t *testing.T, p *Provider, name, want string) {
	t.Helper()
	got, err := p.Get(context.Background(), name)
	if err != nil || got != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", name, got, err, want)
	}
}

func TestRefreshAheadOfTTLInBackground(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1")
		var events []RotationEvent
		p := v.newProvider(t, &Options{TTL: time.Hour, DisableJitter: true,
			OnRotate: func(ev RotationEvent) { events = append(events, ev) }})
		mustGet(t, p, "K", "v1")
		v2 := v.set("K", "v2")

		time.Sleep(44 * time.Minute) // before 75% of TTL: nothing happens
		synctest.Wait()
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("requests before the refresh point = %d, want 1", n)
		}
		mustGet(t, p, "K", "v1")

		time.Sleep(time.Minute) // 45m = 75% of 1h: refreshed with no caller
		synctest.Wait()
		if n := v.requests.Load(); n != 2 {
			t.Fatalf("requests after the refresh point = %d, want 2", n)
		}
		mustGet(t, p, "K", "v2")
		if len(events) != 1 || events[0].OldVersion == "" || events[0].NewVersion != v2 || events[0].Secret.Value() != "v2" {
			t.Fatalf("OnRotate events = %+v", events)
		}
		if st := p.Stats(); st.Rotations != 1 || st.Refreshes != 1 {
			t.Fatalf("stats = %+v", st)
		}
	})
}

// TestRefreshKeepsGoingWithoutReaders: within IdleTimeout, a secret is
// refreshed whether or not anyone reads it.
func TestRefreshKeepsGoingWithoutReaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1")
		p := v.newProvider(t, &Options{TTL: time.Second, DisableJitter: true, IdleTimeout: time.Minute})
		mustGet(t, p, "K", "v1")
		time.Sleep(10 * time.Second)
		synctest.Wait()
		// One read, then one every 0.75s: 13 in 10s.
		if n := v.requests.Load(); n != 14 {
			t.Fatalf("requests in 10s with TTL 1s = %d, want 14", n)
		}
	})
}

func TestRefreshJitterSpreadsReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		names := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"}
		for _, n := range names {
			v.set(n, "x")
		}
		p := v.newProvider(t, &Options{TTL: 100 * time.Second})
		start := time.Now()
		if err := p.Preload(context.Background(), names...); err != nil {
			t.Fatal(err)
		}
		// The pacer spreads the first reads over a few tens of
		// milliseconds: each refresh is due 75-90% of TTL after its own.
		loaded := time.Since(start)
		time.Sleep(95 * time.Second)
		synctest.Wait()
		seen := map[time.Duration]bool{}
		for _, r := range v.requestLog()[len(names):] {
			d := r.At.Sub(start)
			if d < 75*time.Second || d > 90*time.Second+loaded {
				t.Errorf("refresh at %v, want within [75s, 90s] of a 100s TTL", d)
			}
			seen[d] = true
		}
		if len(seen) < len(names)/2 {
			t.Fatalf("refresh times not spread: %v", seen)
		}
	})
}

func TestExpiryAwareRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		exp := time.Now().Add(10 * time.Minute)
		v.set("K", "old", withExp(exp))
		p := v.newProvider(t, &Options{TTL: 24 * time.Hour})
		mustGet(t, p, "K", "old")
		time.Sleep(5 * time.Minute)
		v.set("K", "new", withExp(time.Now().Add(180*24*time.Hour))) // rotated ahead of expiry
		time.Sleep(5 * time.Minute)                                  // exp: re-read then, not after 18h
		synctest.Wait()
		mustGet(t, p, "K", "new")
		if n := v.requests.Load(); n != 2 {
			t.Fatalf("requests = %d, want 2", n)
		}
	})
}

func TestExpiredSecretIsRecheckedAtABoundedInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v", withExp(time.Now().Add(-time.Hour))) // expired, never rotated
		p := v.newProvider(t, &Options{TTL: 24 * time.Hour, ExpiredRecheck: 5 * time.Minute})
		mustGet(t, p, "K", "v") // served by default, as Key Vault serves it
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := v.requests.Load(); n != 13 {
			t.Fatalf("requests in 1h = %d, want 13 (one read, then one per 5m)", n)
		}
	})
}

func TestExpiryWarningOncePerVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1", withExp(time.Now().Add(20*24*time.Hour)))
		v.set("Far", "x", withExp(time.Now().Add(300*24*time.Hour)))
		logs := &logRecorder{}
		p := v.newProvider(t, &Options{TTL: time.Hour, IdleTimeout: 24 * time.Hour, Logger: slog.New(logs)})
		mustGet(t, p, "K", "v1")
		mustGet(t, p, "Far", "x")
		time.Sleep(5 * time.Hour)
		synctest.Wait()
		if n := logs.count(slog.LevelWarn, "expires soon"); n != 1 {
			t.Fatalf("expiry warnings = %d, want 1 over several refreshes", n)
		}
		v.set("K", "v2", withExp(time.Now().Add(10*24*time.Hour)))
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := logs.count(slog.LevelWarn, "expires soon"); n != 2 {
			t.Fatalf("expiry warnings = %d, want 2 after a new version", n)
		}
	})
}

func TestEnforceValidity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		now := time.Now()
		v.set("Expired", "x", withExp(now.Add(-time.Minute)))
		v.set("Future", "x", withNbf(now.Add(time.Hour)))
		v.set("Soon", "x", withExp(now.Add(time.Minute)))

		lax := v.newProvider(t, nil)
		for _, n := range []string{"Expired", "Future", "Soon"} {
			mustGet(t, lax, n, "x")
		}

		strict := v.newProvider(t, &Options{EnforceValidity: true})
		if _, err := strict.Get(context.Background(), "Expired"); !errors.Is(err, ErrExpired) {
			t.Fatalf("expired: %v", err)
		}
		if _, err := strict.Get(context.Background(), "Future"); !errors.Is(err, ErrNotYetValid) {
			t.Fatalf("not yet valid: %v", err)
		}
		mustGet(t, strict, "Soon", "x")
		time.Sleep(time.Hour + time.Minute)
		if _, err := strict.Get(context.Background(), "Soon"); !errors.Is(err, ErrExpired) {
			t.Fatalf("after exp: %v", err)
		}
		mustGet(t, strict, "Future", "x") // nbf has passed
	})
}

func TestTransientFailureServesStaleThenDropsAtMaxStale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1")
		logs := &logRecorder{}
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxStale: time.Hour, DisableJitter: true, Logger: slog.New(logs)})
		mustGet(t, p, "K", "v1")
		fetched := time.Now()
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })

		// Through the outage, callers keep getting the value without waiting.
		for time.Since(fetched)+30*time.Second < time.Hour {
			time.Sleep(30 * time.Second)
			mustGet(t, p, "K", "v1")
		}
		st := p.Stats()
		if st.StaleServes == 0 || st.RefreshFailures == 0 {
			t.Fatalf("stats during outage = %+v", st)
		}
		// Retries back off 1s, 2s, … up to MaxRetryBackoff (2m): about
		// 37 reads in the hour, where retrying at every refresh point would
		// make 80 and retrying at once thousands.
		if n := v.requests.Load(); n < 30 || n > 40 {
			t.Fatalf("requests during a 1h outage = %d, want 30-40", n)
		}
		if logs.count(slog.LevelWarn, "refresh failed") == 0 {
			t.Fatal("no warning logged for failed refreshes")
		}

		// At MaxStale the value is dropped, exactly then.
		time.Sleep(time.Until(fetched.Add(time.Hour)))
		synctest.Wait()
		_, err := p.Get(context.Background(), "K")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("after MaxStale: %v, want ErrUnavailable", err)
		}
		if p.Stats().StaleDrops != 1 {
			t.Fatalf("stale drops = %d", p.Stats().StaleDrops)
		}

		// The vault comes back: the background retry restores the value
		// with no caller involved.
		v.setFail(nil)
		time.Sleep(DefaultMaxRetryBackoff + time.Second)
		synctest.Wait()
		before := v.requests.Load()
		mustGet(t, p, "K", "v1")
		if v.requests.Load() != before {
			t.Fatal("value was not restored in the background")
		}
	})
}

func TestCredentialFailureIsTransient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1")
		p := v.newProvider(t, &Options{TTL: time.Minute})
		mustGet(t, p, "K", "v1")
		v.setFailErr(errors.New("DefaultAzureCredential: failed to acquire a token"))
		time.Sleep(10 * time.Minute)
		mustGet(t, p, "K", "v1")
		if p.Stats().RefreshFailures == 0 {
			t.Fatal("no refresh failure counted")
		}
	})
}

func TestAuthoritativeAnswersStopServingAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		revoke func(v *fakeVault)
		want   error
	}{
		{"deleted", func(v *fakeVault) { v.delete("K") }, ErrNotFound},
		{"forbidden", func(v *fakeVault) {
			v.setFail(func(string) (int, string) { return http.StatusForbidden, "Forbidden" })
		}, ErrForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := newFakeVault()
				v.set("K", "v1")
				logs := &logRecorder{}
				p := v.newProvider(t, &Options{TTL: time.Minute, DisableJitter: true, Logger: slog.New(logs)})
				mustGet(t, p, "K", "v1")
				tc.revoke(v)
				time.Sleep(45 * time.Second) // the background refresh sees it
				synctest.Wait()
				_, err := p.Get(context.Background(), "K")
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				if p.Stats().Revocations != 1 || logs.count(slog.LevelWarn, "dropped") != 1 {
					t.Fatalf("stats = %+v", p.Stats())
				}
				// No more background reads of a revoked secret.
				n := v.requests.Load()
				time.Sleep(time.Hour)
				synctest.Wait()
				if v.requests.Load() != n {
					t.Fatal("a revoked secret is still refreshed in the background")
				}
			})
		})
	}
}

func TestRevocationDuringOutageWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1")
		p := v.newProvider(t, &Options{TTL: time.Minute, DisableJitter: true, MaxRetryBackoff: 10 * time.Second, RetryBackoff: 10 * time.Second})
		mustGet(t, p, "K", "v1")
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "" })
		time.Sleep(5 * time.Minute)
		mustGet(t, p, "K", "v1") // stale, served
		v.delete("K")
		v.setFail(nil)
		time.Sleep(11 * time.Second) // the next retry hears the 404
		synctest.Wait()
		if _, err := p.Get(context.Background(), "K"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
}

func TestNotFoundIsRememberedForNegativeTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		p := v.newProvider(t, &Options{NegativeTTL: 30 * time.Second})
		for range 100 {
			if _, err := p.Get(context.Background(), "Missing"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v", err)
			}
		}
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("requests for 100 misses = %d, want 1", n)
		}
		time.Sleep(30 * time.Second)
		v.set("Missing", "now here")
		mustGet(t, p, "Missing", "now here")
		if st := p.Stats(); st.NegativeHits != 99 || v.requests.Load() != 2 {
			t.Fatalf("stats = %+v, requests = %d", st, v.requests.Load())
		}
	})
}

func TestRefreshReadsNowAndFiresOnRotate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v1 := v.set("K", "v1")
		var events []RotationEvent
		p := v.newProvider(t, &Options{OnRotate: func(ev RotationEvent) { events = append(events, ev) }})
		mustGet(t, p, "K", "v1")
		s, err := p.Refresh(context.Background(), "K")
		if err != nil || s.Version != v1 || len(events) != 0 {
			t.Fatalf("Refresh without change = %v, %v, events %v", s, err, events)
		}
		v2 := v.set("K", "v2")
		s, err = p.Refresh(context.Background(), "k") // another spelling, the same secret
		if err != nil || s.Value() != "v2" || s.Version != v2 {
			t.Fatalf("Refresh = %v, %v", s, err)
		}
		if len(events) != 1 || events[0].OldVersion != v1 || events[0].NewVersion != v2 || events[0].Name != "K" {
			t.Fatalf("events = %+v", events)
		}
		mustGet(t, p, "K", "v2")

		// A transient failure is returned and changes nothing.
		v.setFail(func(string) (int, string) { return http.StatusTooManyRequests, "Throttled" })
		if _, err := p.Refresh(context.Background(), "K"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Refresh during throttling = %v", err)
		}
		mustGet(t, p, "K", "v2")
	})
}

func TestOnRotatePanicIsRecovered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1")
		logs := &logRecorder{}
		calls := 0
		p := v.newProvider(t, &Options{Logger: slog.New(logs), OnRotate: func(ev RotationEvent) {
			calls++
			panic(ev.Secret.Value())
		}})
		mustGet(t, p, "K", "v1")
		v.set("K", "the-new-value")
		if _, err := p.Refresh(context.Background(), "K"); err != nil {
			t.Fatal(err)
		}
		mustGet(t, p, "K", "the-new-value")
		if calls != 1 || logs.count(slog.LevelError, "OnRotate panicked") != 1 {
			t.Fatalf("calls = %d, logs = %d", calls, logs.count(slog.LevelError, "OnRotate panicked"))
		}
		logs.assertNoValue(t, "the-new-value")
	})
}

func TestOnRotateMayReadTheProvider(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v1")
		var p *Provider
		var seen string
		p = v.newProvider(t, &Options{TTL: time.Minute, OnRotate: func(ev RotationEvent) {
			seen, _ = p.Get(context.Background(), ev.Name) // no lock held: no deadlock
		}})
		mustGet(t, p, "K", "v1")
		v.set("K", "v2")
		time.Sleep(time.Minute)
		synctest.Wait()
		if seen != "v2" {
			t.Fatalf("OnRotate read %q", seen)
		}
	})
}

// assertNoValue fails if any logged message or attribute contains value.
func (l *logRecorder) assertNoValue(t *testing.T, value string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			b.WriteString(" " + a.String())
			return true
		})
		if strings.Contains(b.String(), value) {
			t.Fatalf("a log record reveals the secret value: %s", b.String())
		}
	}
}
