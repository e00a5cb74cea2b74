package hostile_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

const val1 = "sk_live_VALUE_ONE_7f3a9"

// Handle, *Handle and a struct holding the handle print without the value.
func TestHandlePrintsNoValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, logs := env(t, nil)
		set(t, v, "StripeKey", val1)
		h, err := p.Handle("StripeKey")
		if err != nil {
			t.Fatal(err)
		}
		if got, err := h.Get(t.Context()); err != nil || got != val1 {
			t.Fatalf("h.Get = %q, %v", got, err)
		}
		type holder struct {
			H *kvsecrets.Handle
			h *kvsecrets.Handle
		}
		s := allPrints(h) + allPrints(holder{h, h}) + allPrints(&holder{h, h})
		// A Handle value (dereferenced) bypasses pointer-receiver methods.
		hv := reflect.ValueOf(h).Elem()
		s += fmt.Sprintf("%v %+v %#v", hv, hv, hv)
		jb, _ := json.Marshal(map[string]any{"h": h, "hv": holder{h, h}})
		s += string(jb)
		mustNotContain(t, "printing a Handle", s, val1)
		mustNotContain(t, "logs", logs.String(), val1)
	})
}

// Handle's own fields (not following into the Provider) hold no value.
func TestHandleReflectionHoldsNoValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "StripeKey", val1)
		h, _ := p.Handle("StripeKey")
		if _, err := h.Get(t.Context()); err != nil {
			t.Fatal(err)
		}
		mustNotContain(t, "reflection walk of *Handle (Provider skipped)",
			reachable(h, "kvsecrets.Provider"), val1)
	})
}

// Invalid names are never echoed: not by Handle, Status, Health, HealthHandler's panic, Watch.
func TestInvalidNamesNotEchoed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, p, logs := env(t, nil)
		bad := "password=hunter2 secret!"
		_, err := p.Handle(bad)
		if !errors.Is(err, kvsecrets.ErrInvalidName) {
			t.Errorf("Handle(bad) = %v", err)
		}
		var out strings.Builder
		if err != nil {
			out.WriteString(allPrints(err))
			out.WriteString(reachable(err))
		}
		st := p.Status(bad)
		if st.Name != "" || st.Served() {
			t.Errorf("Status(bad) = %+v", st)
		}
		out.WriteString(allPrints(st) + reachable(st))
		jb, _ := json.Marshal(st)
		out.Write(jb)
		for _, s := range p.Health(bad, "Ok-Name") {
			out.WriteString(allPrints(s) + reachable(s))
		}
		func() {
			defer func() {
				r := recover()
				if r == nil {
					t.Errorf("HealthHandler(bad) did not panic")
				}
				out.WriteString(fmt.Sprintf("%v %+v", r, r))
				if e, ok := r.(error); ok {
					out.WriteString(reachable(e))
				}
			}()
			p.HealthHandler("Ok", bad)
		}()
		n := 0
		for _, err := range p.Watch(t.Context(), bad) {
			n++
			if !errors.Is(err, kvsecrets.ErrInvalidName) {
				t.Errorf("Watch(bad) yielded %v", err)
			}
			if err != nil {
				out.WriteString(allPrints(err) + reachable(err))
			}
			if n > 3 {
				break
			}
		}
		if n != 1 {
			t.Errorf("Watch(bad) yielded %d times, want once", n)
		}
		mustNotContain(t, "invalid name handling", out.String()+logs.String(), "hunter2")
	})
}

// The JSON decode failure of a LoadLive rebuild must not carry the value
// (encoding/json's UnmarshalTypeError quotes numbers: "number 123456789012").
func TestLiveRebuildErrorCarriesNoValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, logs := env(t, nil)
		set(t, v, "DbConfig", `{"Pin": 12}`)
		set(t, v, "BindAddr", "10.0.0.1")
		type DB struct{ Pin int8 }
		type Cfg struct {
			DB   DB         `keyvault:"DbConfig,json"`
			Bind netip.Addr `keyvault:"BindAddr"`
		}
		var errs []error
		live, err := kvsecrets.LoadLive(t.Context(), p, &kvsecrets.LiveOptions[Cfg]{
			OnError: func(err error) { errs = append(errs, err) },
		})
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		const secretDigits = "98765432101234"
		set(t, v, "DbConfig", `{"Pin": `+secretDigits+`}`)
		if _, err := p.Refresh(t.Context(), "DbConfig"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		const secretAddr = "not-an-ip-TOPSECRET"
		set(t, v, "BindAddr", secretAddr)
		if _, err := p.Refresh(t.Context(), "BindAddr"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if live.Err() == nil {
			t.Fatalf("Live.Err nil after undecodable rotations")
		}
		if live.Current().DB.Pin != 12 || live.Current().Bind.String() != "10.0.0.1" {
			t.Errorf("snapshot changed after failed rebuild: %+v", *live.Current())
		}
		// What a program prints: the message in every verb.
		var printed strings.Builder
		printed.WriteString(allPrints(live.Err()))
		for _, e := range errs {
			printed.WriteString(allPrints(e))
		}
		mustNotContain(t, "Live.Err/OnError printed", printed.String(), secretDigits, "TOPSECRET")
		// What the error chain hands to errors.As / errors.Unwrap walkers
		// (error-reporting SDKs such as Sentry print every wrapped error).
		var chain strings.Builder
		var ute *json.UnmarshalTypeError
		if errors.As(live.Err(), &ute) {
			chain.WriteString("errors.As(*json.UnmarshalTypeError).Value=" + ute.Value + "; ")
		}
		var unwrapped func(error)
		unwrapped = func(e error) {
			if e == nil {
				return
			}
			chain.WriteString(e.Error() + " | ")
			switch u := e.(type) {
			case interface{ Unwrap() []error }:
				for _, x := range u.Unwrap() {
					unwrapped(x)
				}
			case interface{ Unwrap() error }:
				unwrapped(u.Unwrap())
			}
		}
		unwrapped(live.Err())
		mustNotContain(t, "Live.Err wrapped chain (errors.As / Unwrap)", chain.String(), secretDigits, "TOPSECRET")
		var s strings.Builder
		s.WriteString(reachable(live.Err()))
		mustNotContain(t, "Live.Err reflection", s.String(), secretDigits, "TOPSECRET")
		s.Reset()
		lv := reflect.ValueOf(live).Elem()
		s.WriteString(allPrints(live) + fmt.Sprintf("%v %+v", lv, lv))
		jb, _ := json.Marshal(live)
		s.Write(jb)
		for _, st := range p.Health() {
			s.WriteString(allPrints(st) + reachable(st))
		}
		mustNotContain(t, "Live error/print/logs", s.String()+logs.String(), secretDigits, "TOPSECRET")
	})
}

// Status of stale / failing secrets, their errors, and the health body never hold a value.
func TestStatusAndHealthBodyHoldNoValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, logs := env(t, &kvsecrets.Options{MaxStale: 2 * time.Hour})
		set(t, v, "A", val1)
		set(t, v, "B", "b-VALUE-xyz")
		set(t, v, "C", "c-VALUE-xyz")
		for _, n := range []string{"A", "B", "C"} {
			if _, err := p.Get(t.Context(), n); err != nil {
				t.Fatal(err)
			}
		}
		v.FailSecret("B", kvtest.ForbiddenByRbac)
		p.Refresh(t.Context(), "B")
		v.FailFor(10*time.Hour, kvtest.ServiceUnavailable)
		time.Sleep(time.Hour)
		synctest.Wait()
		var s strings.Builder
		for _, st := range p.Health("A", "B", "C", "D") {
			s.WriteString(allPrints(st) + reachable(st))
			jb, _ := json.Marshal(st)
			s.Write(jb)
		}
		h := p.HealthHandler("A", "B", "C")
		for _, m := range []string{"GET", "HEAD", "POST", "DELETE"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, "/ready?verbose=1&name=A&format=full", nil))
			b, _ := io.ReadAll(rec.Body)
			s.Write(b)
		}
		mustNotContain(t, "status/health", s.String()+logs.String(), val1, "b-VALUE", "c-VALUE")
	})
}

// HealthHandler with hostile methods and query strings: only GET/HEAD answer with the
// body; query strings change nothing and are never echoed; HEAD has no body.
func TestHealthHandlerHostileRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", val1)
		h := p.HealthHandler("A")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
		synctest.Wait()
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
		if rec.Code != 200 {
			t.Fatalf("after the probe's background read: %d %s", rec.Code, rec.Body)
		}
		base := rec.Body.String()
		for _, q := range []string{"?name=%3Cscript%3Ealert(1)%3C/script%3E", "?names=B&names=" + strings.Repeat("x", 5000), "?%zz", "?callback=evil"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready"+q, nil))
			if rec.Code != 200 || rec.Body.String() != base {
				t.Errorf("query %.40q changed the answer: %d %s", q, rec.Code, rec.Body)
			}
			mustNotContain(t, "health body", rec.Body.String(), "script", "evil", "xxxx")
		}
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("HEAD", "/ready", nil))
		if rec.Code != 200 || rec.Body.Len() != 0 {
			t.Errorf("HEAD: %d, body %d bytes", rec.Code, rec.Body.Len())
		}
		for _, m := range []string{"POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "BREW"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, "/ready", strings.NewReader("x")))
			if rec.Code != http.StatusMethodNotAllowed {
				t.Errorf("%s answered %d, want 405", m, rec.Code)
			}
			if strings.Contains(rec.Body.String(), `"secrets"`) {
				t.Errorf("%s got the health body", m)
			}
		}
		if ct := rec.Header().Get("Content-Type"); ct == "" {
			_ = ct
		}
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("Content-Type %q", ct)
		}
		if cc := rec.Header().Get("Cache-Control"); !strings.Contains(cc, "no-store") && !strings.Contains(cc, "no-cache") {
			t.Logf("note: health answer has no Cache-Control: %q", cc)
		}
		var body struct {
			Ready   bool
			Secrets []map[string]any
		}
		if err := json.Unmarshal([]byte(base), &body); err != nil || !body.Ready || len(body.Secrets) != 1 {
			t.Errorf("body %s: %v", base, err)
		}
		for k := range body.Secrets[0] {
			if strings.EqualFold(k, "err") || strings.EqualFold(k, "value") {
				t.Errorf("body has field %q", k)
			}
		}
	})
}
