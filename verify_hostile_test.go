package kvsecrets_test

// Reproducers from a hostile review of Verify's promises, on the local
// vault in process under testing/synctest (latency and faults on the
// bubble's clock).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

func hvault(t *testing.T) *kvtest.Server {
	t.Helper()
	v, err := kvtest.NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func hprov(t *testing.T, v *kvtest.Server, o *kvsecrets.Options) *kvsecrets.Provider {
	t.Helper()
	if o == nil {
		o = &kvsecrets.Options{}
	}
	o.ClientOptions = v.ClientOptions()
	p, err := kvsecrets.NewProvider(v.URL(), v.Credential(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func hset(t *testing.T, v *kvtest.Server, name, val string, o *kvtest.SecretOptions) string {
	t.Helper()
	id, err := v.SetSecret(name, val, o)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func accepts(p *kvsecrets.Provider, name, key string) (bool, error) {
	_, err := p.Verify(context.Background(), name, key)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, kvsecrets.ErrMismatch) {
		return false, nil
	}
	return false, err
}

func wantAccept(t *testing.T, p *kvsecrets.Provider, name, key string, want bool, what string) {
	t.Helper()
	got, err := accepts(p, name, key)
	if got != want {
		t.Errorf("%s: Verify(%q,%q) accepted=%v err=%v, want accepted=%v", what, name, key, got, err, want)
	}
}

func hevent(t *testing.T, h http.Handler, typ, id string) {
	t.Helper()
	body := `[{"id":"1","topic":"t","subject":"s","eventType":"` + typ + `","eventTime":"2000-01-01T00:00:00Z","dataVersion":"1","data":{"Id":"` + id + `","VaultName":"kvtest","ObjectType":"Secret"}}]`
	r := httptest.NewRequest("POST", "/events", bytes.NewReader([]byte(body)))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("event status %d: %s", w.Code, w.Body)
	}
}

// Refresh returns nil only when Verify follows what it read: a key set it
// could not re-read is reported.
func TestRefreshReportsAKeySetItCouldNotReRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		v := hvault(t)
		hset(t, v, "K", "k1", nil)
		p := hprov(t, v, nil)
		wantAccept(t, p, "K", "k1", true, "warm")
		time.Sleep(time.Minute)
		hset(t, v, "K", "k2", nil)
		v.SetLatency(time.Second)
		go func() { // after Refresh's GETs of the latest (t+1s), before its versions list (t+2s)
			time.Sleep(1500 * time.Millisecond)
			v.FailFor(time.Minute, kvtest.ServiceUnavailable)
		}()
		s, err := p.Refresh(ctx, "K")
		t.Logf("Refresh = %q, %v", s.Value(), err)
		if err == nil {
			wantAccept(t, p, "K", "k2", true, "Refresh returned k2 and nil")
		}
	})
}

// Refresh does not join a key-set read an Event Grid event started before
// the write it must see.
func TestRefreshDoesNotJoinAnOlderKeySetRead(t *testing.T) {
	for _, off := range []time.Duration{2000, 2250, 2500} {
		t.Run(fmt.Sprint(off*time.Millisecond), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				v := hvault(t)
				hset(t, v, "K", "key-1", nil)
				p := hprov(t, v, &kvsecrets.Options{VerifyPrevious: 1})
				h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true})
				wantAccept(t, p, "K", "key-1", true, "warm")
				time.Sleep(time.Minute)
				v.SetLatency(time.Second)
				id2 := hset(t, v, "K", "key-2", nil)
				hevent(t, h, kvsecrets.EventSecretNewVersionCreated, v.URL()+"secrets/K/"+id2)
				time.Sleep(off * time.Millisecond)
				hset(t, v, "K", "key-3", nil)
				s, err := p.Refresh(ctx, "K")
				t.Logf("off %dms: Refresh = %q, %v", off, s.Value(), err)
				wantAccept(t, p, "K", "key-3", true, "after Refresh returned key-3")
				wantAccept(t, p, "K", "key-1", false, "key-1, 2 rotations old, VerifyPrevious 1")
				time.Sleep(30 * time.Minute)
				wantAccept(t, p, "K", "key-3", true, "30 min later")
			})
		})
	}
}

// A revocation GetVersion learns (deleted, forbidden, the version disabled)
// reaches Verify before GetVersion returns.
func TestGetVersionRevocationStopsVerify(t *testing.T) {
	for _, rc := range []struct {
		name string
		f    func(v *kvtest.Server, v1 string)
	}{
		{"deleted", func(v *kvtest.Server, _ string) { v.DeleteSecret("K") }},
		{"forbidden", func(v *kvtest.Server, _ string) { v.FailSecret("K", kvtest.ForbiddenByRbac) }},
		{"v1 disabled", func(v *kvtest.Server, v1 string) { v.SetEnabled("K", v1, false) }},
	} {
		t.Run(rc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				v := hvault(t)
				v1 := hset(t, v, "K", "k1", nil)
				time.Sleep(time.Second)
				hset(t, v, "K", "k2", nil)
				p := hprov(t, v, nil)
				wantAccept(t, p, "K", "k1", true, "warm")
				time.Sleep(time.Minute)
				rc.f(v, v1)
				_, err := p.GetVersion(ctx, "K", v1)
				t.Logf("%s: GetVersion = %v", rc.name, err)
				wantAccept(t, p, "K", "k1", false, rc.name+": k1 after GetVersion's refusal")
				if rc.name != "v1 disabled" {
					wantAccept(t, p, "K", "k2", false, rc.name+": k2 after GetVersion's refusal")
				}
			})
		})
	}
}

// An empty key never matches, even a secret whose value is empty: a
// request without the header must not pass.
func TestVerifyRefusesAnEmptyKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := hvault(t)
		hset(t, v, "Empty", "", nil)
		p := hprov(t, v, nil)
		if _, err := p.Verify(context.Background(), "Empty", ""); !errors.Is(err, kvsecrets.ErrMismatch) {
			t.Fatalf("Verify of an empty key: %v", err)
		}
	})
}
