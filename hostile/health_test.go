package hostile_test

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

func ready(t *testing.T, p *kvsecrets.Provider, names ...string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	p.HealthHandler(names...).ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	return rec.Code, body
}

// Readiness through an outage: 200 within MaxStale, 503 after, 200 on recovery.
// Status tells stale since when and why, then failing with the class.
func TestReadinessThroughOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour, MaxStale: 4 * time.Hour})
		set(t, v, "A", "a0")
		set(t, v, "B", "b0")
		if code, body := ready(t, p, "A", "B"); code != 503 {
			t.Errorf("not loaded: %d %v", code, body)
		}
		synctest.Wait()
		if code, body := ready(t, p, "A", "B"); code != 200 {
			t.Fatalf("loaded by the probe: %d %v", code, body)
		}
		readAt := time.Now()
		st := p.Status("A")
		if st.State != kvsecrets.StateFresh || st.NextRefresh.IsZero() || !st.ServedUntil.Equal(st.ReadAt.Add(4*time.Hour)) {
			t.Errorf("fresh status %+v", st)
		}
		time.Sleep(time.Minute)
		outageStart := time.Now()
		v.FailFor(10*time.Hour, kvtest.ServiceUnavailable)
		time.Sleep(time.Hour) // refresh due at 45-54m, fails
		synctest.Wait()
		st = p.Status("A")
		if st.State != kvsecrets.StateStale || st.ErrorClass != "unavailable" || st.FailingSince.Before(outageStart) || st.Failures == 0 || !st.Served() {
			t.Errorf("stale status %+v", st)
		}
		if !st.ReadAt.Equal(readAt) {
			t.Errorf("stale ReadAt %v, want %v", st.ReadAt, readAt)
		}
		if st.NextRefresh.IsZero() || !st.NextRefresh.After(time.Now().Add(-time.Second)) {
			t.Errorf("stale NextRefresh %v (now %v)", st.NextRefresh, time.Now())
		}
		for range 5 { // probes every 30 minutes until +3h50m
			time.Sleep(30 * time.Minute)
			if code, body := ready(t, p, "A", "B"); code != 200 {
				t.Errorf("within MaxStale at %v: %d %v", time.Since(readAt), code, body)
			}
		}
		time.Sleep(30 * time.Minute) // past MaxStale (4h after read): now 4h01m
		synctest.Wait()
		if code, body := ready(t, p, "A", "B"); code != 503 {
			t.Errorf("past MaxStale: %d %v", code, body)
		}
		st = p.Status("A")
		if st.State != kvsecrets.StateFailing || st.ErrorClass != "unavailable" || st.Served() {
			t.Errorf("past MaxStale status %+v", st)
		}
		for range 13 { // probes every 30 minutes until 10h31m; the outage ends at 10h01m
			time.Sleep(30 * time.Minute)
			ready(t, p, "A", "B")
		}
		synctest.Wait()
		if code, body := ready(t, p, "A", "B"); code != 200 {
			t.Errorf("after recovery: %d %v", code, body)
		}
		if st := p.Status("A"); st.State != kvsecrets.StateFresh || !st.FailingSince.IsZero() || st.Failures != 0 || st.ErrorClass != "" {
			t.Errorf("after recovery status %+v", st)
		}
	})
}

// Readiness at exactly the MaxStale boundary, when no refresh is due in between:
// MaxStale shorter than TTL; the value read at T is not served at T+MaxStale.
func TestReadinessAtMaxStaleBoundary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: 10 * time.Hour, MaxStale: time.Hour})
		set(t, v, "A", "a0")
		p.Get(t.Context(), "A")
		v.FailFor(10*time.Hour, kvtest.ServiceUnavailable)
		time.Sleep(time.Hour + time.Second)
		code, body := ready(t, p, "A")
		_, gerr := p.Get(t.Context(), "A")
		st := p.Status("A")
		if (code == 200) != (gerr == nil) || st.Served() != (gerr == nil) {
			t.Errorf("at MaxStale+1s: probe %d %v, Get err %v, status %+v", code, body, gerr, st)
		}
	})
}

// Revocations: failing with the class, 503 at once.
func TestStatusRevocationClasses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		for _, n := range []string{"Gone", "Off", "Denied", "Ok"} {
			set(t, v, n, "x")
			p.Get(t.Context(), n)
		}
		v.DeleteSecret("Gone")
		v.SetEnabled("Off", "", false)
		v.FailSecret("Denied", kvtest.AccessDenied)
		for _, n := range []string{"Gone", "Off", "Denied"} {
			p.Refresh(t.Context(), n)
		}
		want := map[string]string{"Gone": "notFound", "Off": "disabled", "Denied": "forbidden", "Ok": ""}
		for _, st := range p.Health("Gone", "Off", "Denied", "Ok", "Never") {
			if st.Name == "Never" {
				if st.State != kvsecrets.StateNotLoaded {
					t.Errorf("never read: %+v", st)
				}
				continue
			}
			if st.ErrorClass != want[st.Name] {
				t.Errorf("%s: class %q want %q (%+v)", st.Name, st.ErrorClass, want[st.Name], st)
			}
			if st.Name != "Ok" && (st.State != kvsecrets.StateFailing || st.Err == nil || st.Version != "") {
				t.Errorf("%s: %+v", st.Name, st)
			}
		}
		if code, _ := ready(t, p, "Ok"); code != 200 {
			t.Errorf("Ok alone: %d", code)
		}
		if code, body := ready(t, p, "Ok", "Off"); code != 503 {
			t.Errorf("with a disabled secret: %d %v", code, body)
		}
		if code, body := ready(t, p); code != 503 {
			t.Errorf("no names (all held) with revoked ones: %d %v", code, body)
		}
	})
}

// Status makes no request and is not a read (idle drop still happens while polled).
func TestStatusIsNotARead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour})
		set(t, v, "A", "a")
		p.Get(t.Context(), "A")
		req := p.Stats().VaultRequests
		for range 12 * 6 {
			time.Sleep(5 * time.Minute)
			p.Status("A")
			p.Health()
		}
		synctest.Wait()
		s := p.Stats()
		if s.IdleDrops != 1 {
			t.Errorf("polled by Status for 6h: IdleDrops %d; status %+v", s.IdleDrops, p.Status("A"))
		}
		if p.Status("Other"); p.Stats().VaultRequests > req+2 {
			t.Errorf("Status made requests: %d -> %d", req, p.Stats().VaultRequests)
		}
		if st := p.Status("A"); st.State != kvsecrets.StateNotLoaded {
			t.Errorf("after idle drop: %+v", st)
		}
	})
}

// A probe of a secret never read starts reading it; a probe of a missing secret keeps
// 503 and does not hammer the vault.
func TestProbeOfMissingSecret(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		h := p.HealthHandler("Missing")
		for range 1000 {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
			if rec.Code != 503 {
				t.Fatalf("missing: %d", rec.Code)
			}
			time.Sleep(100 * time.Millisecond)
		}
		synctest.Wait()
		if n := v.SecretRequests("Missing"); n > 100/30+3 {
			t.Errorf("1000 probes over 100s of a missing secret: %d vault requests", n)
		}
		if st := p.Status("Missing"); st.State != kvsecrets.StateFailing || st.ErrorClass != "notFound" {
			t.Errorf("status %+v", st)
		}
	})
}
