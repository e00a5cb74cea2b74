package kvsecrets

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// knownValue has characters no name may have, as API keys often do, so that
// passing it as a name by mistake is refused without being echoed.
const knownValue = "hunter2_THE+VALUE/="

func TestSecretNeverRevealsItsValue(t *testing.T) {
	s := Secret{Name: "MyApiKey", Version: "abc", ContentType: "text/plain", Tags: map[string]string{"env": "prod"},
		Expires: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), value: newRedacted(knownValue)}
	ev := RotationEvent{Name: "MyApiKey", OldVersion: "a", NewVersion: "b", Secret: s}
	// Applications' structs: fmt cannot call methods on unexported fields
	// and prints them by reflection.
	type appExported struct {
		Key    Secret
		Keys   []Secret
		ByName map[string]Secret
		Event  RotationEvent
		Ptr    *Secret
	}
	type appUnexported struct {
		key    Secret
		keys   []Secret
		byName map[string]Secret
		event  RotationEvent
		ptr    *Secret
		nested appExported
	}
	exp := appExported{Key: s, Keys: []Secret{s}, ByName: map[string]Secret{"k": s}, Event: ev, Ptr: &s}
	unexp := appUnexported{key: s, keys: []Secret{s}, byName: map[string]Secret{"k": s}, event: ev, ptr: &s, nested: exp}
	values := []any{s, &s, ev, &ev, []Secret{s}, map[string]Secret{"k": s}, []*Secret{&s}, s.value,
		exp, &exp, unexp, &unexp, []appUnexported{unexp}, map[string]appUnexported{"k": unexp}, struct{ any }{unexp}}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%p", "%T %v", "%10.3s", "%-v", "%#x", "% x", "%U", "%c", "%b", "%o", "%e"} {
		for _, v := range values {
			outs = append(outs, fmt.Sprintf(verb, v))
		}
	}
	outs = append(outs, s.String(), s.GoString(), fmt.Sprint(s, unexp), fmt.Sprintln(s, ev, unexp))
	for _, v := range []any{s, &s, ev, []Secret{s}, map[string]any{"s": s}, exp, unexp} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, string(b))
	}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		l := slog.New(h)
		l.Info("msg", "secret", s, "ptr", &s, "event", ev, "any", slog.AnyValue(s), "list", []Secret{s}, "raw", s.value,
			"app", exp, "appPtr", &exp, "private", unexp, "privatePtr", &unexp)
	}
	outs = append(outs, buf.String())
	hexLower, hexUpper := fmt.Sprintf("%x", knownValue), fmt.Sprintf("%X", knownValue)
	for _, o := range outs {
		if strings.Contains(o, knownValue) || strings.Contains(o, hexLower) || strings.Contains(o, hexUpper) ||
			strings.Contains(o, "hunter2") {
			t.Fatalf("value revealed: %s", o)
		}
	}
	if !strings.Contains(s.String(), "MyApiKey") || !strings.Contains(buf.String(), "MyApiKey") {
		t.Fatalf("metadata missing: %s / %s", s.String(), buf.String())
	}
	if s.Value() != knownValue || (Secret{}).Value() != "" {
		t.Fatal("Value() does not return the value")
	}
}

// TestNoValueInLogsOrErrors runs the public surface through successes,
// rotations, outages, revocations and misuse with a known value, and scans
// every log line and error for it.
func TestNoValueInLogsOrErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", knownValue, withExp(time.Now().Add(24*time.Hour)))
		logs := &logRecorder{}
		var buf bytes.Buffer
		logger := slog.New(multiHandler{logs, slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})})
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxStale: 10 * time.Minute, Logger: logger,
			OnRotate: func(ev RotationEvent) { logger.Info("rotated", "event", ev) }})
		ctx := context.Background()
		var errs []error
		keep := func(_ any, err error) {
			if err != nil {
				errs = append(errs, err)
			}
		}
		keep(p.Get(ctx, "K"))
		keep(p.GetSecret(ctx, "K"))
		v.set("K", knownValue+"-2")
		keep(p.Refresh(ctx, "K"))
		keep(p.Get(ctx, knownValue)) // a value passed as a name by mistake
		keep(p.GetVersion(ctx, "K", knownValue))
		errs = append(errs, p.Preload(ctx, "K", knownValue))
		keep(p.Verify(ctx, "K", knownValue+"-wrong"))
		keep(p.Rotate(ctx, knownValue, knownValue, nil)) // name and value swapped by mistake
		keep(p.Rotate(ctx, "K", knownValue+"-3", nil))
		v.failWrites = http.StatusForbidden
		keep(p.Rotate(ctx, "K", knownValue+"-4", nil))
		v.failWrites = 0
		// Decoders quote their input in their messages: Load withholds them.
		v.set("JSONish", `{"key": "`+knownValue+`", broken`)
		v.set("NotAnAddr", knownValue)
		var cfg struct {
			J map[string]string `keyvault:"JSONish,json"`
			A netip.Addr        `keyvault:"NotAnAddr"`
			T time.Time         `keyvault:"NotAnAddr"`
			N int               `keyvault:"NotAnAddr,json"`
		}
		errs = append(errs, p.Load(ctx, &cfg))
		_, err := p.ResolveEnv(ctx, []string{"X=@Microsoft.KeyVault(VaultName=fake;SecretName=Missing)", "Y=" + knownValue})
		errs = append(errs, err)
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/e", strings.NewReader(`{"eventType":"Microsoft.KeyVault.SecretNearExpiry","data":{"Id":"`+fakeVaultURL+`secrets/K/abc"}}`)))
		fmt.Fprintf(&buf, "%v %+v %#v", p.Stats(), cfg, rec.Body.String())
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })
		time.Sleep(15 * time.Minute)
		keep(p.Get(ctx, "K"))
		keep(p.Refresh(ctx, "K"))
		v.setFail(func(string) (int, string) { return http.StatusForbidden, "Forbidden" })
		keep(p.Refresh(ctx, "K"))
		keep(p.Get(ctx, "K"))
		if len(errs) < 6 {
			t.Fatalf("expected failures to scan, got %d", len(errs))
		}
		for _, err := range errs {
			for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
				if strings.Contains(s, knownValue) || strings.Contains(s, "hunter2") {
					t.Fatalf("error reveals the value: %s", s)
				}
			}
		}
		logs.assertNoValue(t, "hunter2")
		if strings.Contains(buf.String(), "hunter2") {
			t.Fatalf("JSON log reveals the value: %s", buf.String())
		}
		if logs.count(slog.LevelWarn, "") == 0 {
			t.Fatal("nothing was logged; the scan proves nothing")
		}
	})
}

type multiHandler []slog.Handler

func (m multiHandler) Enabled(context.Context, slog.Level) bool { return true }
func (m multiHandler) Handle(ctx context.Context, r slog.Record) error {
	for _, h := range m {
		if h.Enabled(ctx, r.Level) {
			h.Handle(ctx, r.Clone())
		}
	}
	return nil
}
func (m multiHandler) WithAttrs([]slog.Attr) slog.Handler { return m }
func (m multiHandler) WithGroup(string) slog.Handler      { return m }

// TestLiveSurfacesNeverRevealTheValue runs the Handle, the Live wrapper,
// SecretStatus (stale and failing, with their errors) and the health
// body through the same printing, JSON and slog paths as a Secret, bare and
// inside applications' structs (where fmt prints unexported fields by
// reflection).
func TestLiveSurfacesNeverRevealTheValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", knownValue)
		v.set("J", `{"key":"`+knownValue+`"}`)
		var logBuf bytes.Buffer
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxStale: 10 * time.Minute,
			Logger: slog.New(slog.NewJSONHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		ctx := context.Background()
		h, err := p.Handle("K")
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := h.Get(ctx); got != knownValue {
			t.Fatal(got)
		}
		type cfg struct {
			S Secret            `keyvault:"K"`
			J map[string]string `keyvault:"J,json"`
		}
		live, err := LoadLive[cfg](ctx, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		v.set("J", `{"key":"`+knownValue+`", broken`) // a failed rebuild, with its error
		p.Refresh(ctx, "J")
		synctest.Wait()
		if live.Err() == nil {
			t.Fatal("the rebuild did not fail")
		}
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })
		time.Sleep(2 * time.Minute)
		stale := p.Status("K")
		if stale.State != StateStale || stale.Err == nil {
			t.Fatalf("%+v", stale)
		}
		failing := p.Status(knownValue) // a value passed as a name
		rec := httptest.NewRecorder()
		p.HealthHandler("K", "J").ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
		health := p.Health()

		type appExported struct {
			H      *Handle
			L      *Live[cfg]
			S      SecretStatus
			All    []SecretStatus
			Err    error
			Events RotationEvent
		}
		type appUnexported struct {
			h   *Handle
			l   *Live[cfg]
			s   SecretStatus
			all []SecretStatus
			err error
			n   appExported
		}
		exp := appExported{H: h, L: live, S: stale, All: health, Err: live.Err()}
		unexp := appUnexported{h: h, l: live, s: stale, all: health, err: live.Err(), n: exp}
		values := []any{h, live, stale, &stale, failing, health, exp, &exp, unexp, &unexp,
			[]appUnexported{unexp}, map[string]appUnexported{"k": unexp}, struct{ any }{unexp}}
		var outs []string
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%p", "%T %v"} {
			for _, x := range values {
				outs = append(outs, fmt.Sprintf(verb, x))
			}
		}
		for _, x := range []any{h, live, stale, failing, health, exp} {
			b, err := json.Marshal(x)
			if err != nil {
				t.Fatal(err)
			}
			outs = append(outs, string(b))
		}
		slog.New(slog.NewTextHandler(&logBuf, nil)).Info("msg", "handle", h, "live", live, "status", stale,
			"health", health, "app", exp, "private", unexp)
		outs = append(outs, logBuf.String(), rec.Body.String(), live.Err().Error(), stale.Err.Error(), failing.Err.Error())
		hexLower := fmt.Sprintf("%x", knownValue)
		for _, o := range outs {
			if strings.Contains(o, "hunter2") || strings.Contains(o, hexLower) {
				t.Fatalf("value revealed: %s", o)
			}
		}
		if !strings.Contains(rec.Body.String(), `"name":"K"`) || !strings.Contains(fmt.Sprint(live), `"J"`) {
			t.Fatalf("names missing: %s / %v", rec.Body.String(), live)
		}
	})
}
