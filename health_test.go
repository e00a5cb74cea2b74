package kvsecrets

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestStatusFollowsTheSecret(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		ver := v.set("ApiKey", knownValue)
		p := v.newProvider(t, &Options{TTL: time.Hour, MaxStale: 3 * time.Hour, NegativeTTL: time.Minute, DisableJitter: true})
		if s := p.Status("ApiKey"); s.State != StateNotLoaded || s.Served() {
			t.Fatalf("before a read: %+v", s)
		}
		start := time.Now()
		mustGet(t, p, "ApiKey", knownValue)
		s := p.Status("apikey")
		if s.State != StateFresh || s.Version != ver || !s.ReadAt.Equal(start) || !s.ServedUntil.Equal(start.Add(3*time.Hour)) ||
			!s.NextRefresh.Equal(start.Add(45*time.Minute)) || s.Err != nil || s.Name != "apikey" {
			t.Fatalf("fresh: %+v", s)
		}
		if v.requests.Load() != 1 {
			t.Fatal("Status made a request")
		}

		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })
		time.Sleep(46 * time.Minute)
		failedAt := start.Add(45 * time.Minute)
		time.Sleep(time.Hour)
		s = p.Status("ApiKey")
		if s.State != StateStale || !s.Served() || !s.FailingSince.Equal(failedAt) || s.ErrorClass != "unavailable" ||
			!errors.Is(s.Err, ErrUnavailable) || s.Failures < 2 || s.NextRefresh.Before(time.Now()) {
			t.Fatalf("stale: %+v", s)
		}
		p.Get(t.Context(), "ApiKey") // read, so that it is not dropped for idleness
		time.Sleep(84 * time.Minute)
		s = p.Status("ApiKey")
		if s.State != StateFailing || s.Served() || s.ErrorClass != "unavailable" || !s.FailingSince.Equal(failedAt) {
			t.Fatalf("past MaxStale: %+v", s)
		}

		v.setFail(nil)
		time.Sleep(3 * time.Minute)
		if s = p.Status("ApiKey"); s.State != StateFresh || !s.FailingSince.IsZero() || s.Err != nil {
			t.Fatalf("recovered: %+v", s)
		}
		v.disable("ApiKey", ver)
		p.Refresh(t.Context(), "ApiKey")
		if s = p.Status("ApiKey"); s.State != StateFailing || (s.ErrorClass != "forbidden" && s.ErrorClass != "disabled") || s.FailingSince.IsZero() {
			t.Fatalf("refused: %+v", s)
		}
		if s = p.Status(knownValue); s.State != StateFailing || s.ErrorClass != "invalidName" || strings.Contains(s.Err.Error(), "hunter2") {
			t.Fatalf("invalid name: %+v", s)
		}
		p.Close()
		if s = p.Status("ApiKey"); s.ErrorClass != "closed" {
			t.Fatalf("closed: %+v", s)
		}
	})
}

type healthBody struct {
	Ready   bool           `json:"ready"`
	Secrets []SecretStatus `json:"secrets"`
}

func probe(t *testing.T, h http.Handler, method string) (int, healthBody, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/ready", nil))
	var b healthBody
	if method == http.MethodGet {
		if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
			t.Fatalf("%v: %s", err, rec.Body)
		}
	}
	return rec.Code, b, rec.Body.String()
}

func TestHealthHandlerForReadinessProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("A", knownValue)
		v.set("B", knownValue+"-b")
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxStale: 10 * time.Minute})
		h := p.HealthHandler("A", "B")
		mustGet(t, p, "A", knownValue)

		code, b, raw := probe(t, h, http.MethodGet)
		if code != http.StatusServiceUnavailable || b.Ready || len(b.Secrets) != 2 || b.Secrets[0].State != StateFresh || b.Secrets[1].State != StateNotLoaded {
			t.Fatalf("B not read: %d %s", code, raw)
		}
		synctest.Wait() // the probe started reading B
		if code, _, raw = probe(t, h, http.MethodGet); code != http.StatusOK || !strings.Contains(raw, `"state":"fresh"`) {
			t.Fatalf("both read: %d %s", code, raw)
		}

		// Probes alone keep the secrets: nobody else reads them for an hour.
		probeFor := func(d time.Duration) {
			for range d / (10 * time.Second) {
				time.Sleep(10 * time.Second)
				probe(t, h, http.MethodHead)
			}
		}
		probeFor(time.Hour)
		if d := p.Stats().IdleDrops; d != 0 {
			t.Fatalf("probed secrets were dropped for idleness: %d", d)
		}

		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })
		probeFor(5 * time.Minute)
		if code, _, raw = probe(t, h, http.MethodGet); code != http.StatusOK || !strings.Contains(raw, `"state":"stale"`) || !strings.Contains(raw, `"error":"unavailable"`) {
			t.Fatalf("stale within MaxStale: %d %s", code, raw)
		}
		probeFor(10 * time.Minute)
		if code, _, raw = probe(t, h, http.MethodGet); code != http.StatusServiceUnavailable || !strings.Contains(raw, `"state":"failing"`) {
			t.Fatalf("past MaxStale: %d %s", code, raw)
		}
		v.setFail(func(name string) (int, string) {
			if name == "B" {
				return http.StatusForbidden, "ForbiddenByRbac"
			}
			return 0, ""
		})
		probeFor(3 * time.Minute)
		// A refusal is forgotten after NegativeTTL; the probe that then
		// finds B not loaded reads it again.
		for range 2 {
			probe(t, h, http.MethodHead)
			synctest.Wait()
			if code, b, raw = probe(t, h, http.MethodGet); b.Secrets[1].State != StateNotLoaded {
				break
			}
		}
		if code != http.StatusServiceUnavailable || b.Secrets[0].State != StateFresh || b.Secrets[1].ErrorClass != "forbidden" {
			t.Fatalf("B forbidden: %d %s", code, raw)
		}
		if strings.Contains(raw, "hunter2") {
			t.Fatalf("the body reveals a value: %s", raw)
		}
		if code, _, _ := probe(t, h, http.MethodPost); code != http.StatusMethodNotAllowed {
			t.Fatalf("POST: %d", code)
		}
		defer func() {
			if r := recover(); r == nil || strings.Contains(r.(string), "hunter2") {
				t.Fatalf("an invalid name: %v", r)
			}
		}()
		p.HealthHandler(knownValue)
	})
}

func TestHealthWithoutNamesReportsEverySecretHeld(t *testing.T) {
	v := newFakeVault()
	v.set("B", "b")
	v.set("A", "a")
	p := v.newProvider(t, nil)
	if code, b, _ := probe(t, p.HealthHandler(), http.MethodGet); code != http.StatusOK || len(b.Secrets) != 0 {
		t.Fatalf("%d %+v", code, b)
	}
	mustGet(t, p, "B", "b")
	mustGet(t, p, "A", "a")
	p.Get(t.Context(), "Missing")
	hs := p.Health()
	if len(hs) != 3 || hs[0].Name != "A" || hs[1].Name != "B" || hs[2].ErrorClass != "notFound" {
		t.Fatalf("%+v", hs)
	}
}
