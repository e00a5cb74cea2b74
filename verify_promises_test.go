package kvsecrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// Verify's promises: it follows the vault exactly, at the moment a key is
// presented.

// TestVerifyStopsAtOnceOnRevocation revokes a secret (disabled, deleted, a
// revoked role) and lets each kind of read see it: Refresh, Get's
// background refresh, an Event Grid event, a pinned version's read, and
// Verify's own key-set refresh. Once that read is done, Verify refuses the
// key, with no wait for the key set's own TTL.
func TestVerifyStopsAtOnceOnRevocation(t *testing.T) {
	revocations := map[string]func(v *fakeVault, version string){
		"disabled": func(v *fakeVault, version string) { v.disable("K", version) },
		"deleted":  func(v *fakeVault, _ string) { v.delete("K") },
		"forbidden": func(v *fakeVault, _ string) {
			v.setFail(func(string) (int, string) { return http.StatusForbidden, "ForbiddenByRbac" })
		},
	}
	paths := map[string]func(t *testing.T, p *Provider, v *fakeVault, version string){
		"Refresh": func(t *testing.T, p *Provider, v *fakeVault, _ string) {
			if _, err := p.Refresh(context.Background(), "K"); err == nil {
				t.Fatal("Refresh succeeded on a revoked secret")
			}
		},
		"Get's background refresh": func(t *testing.T, p *Provider, v *fakeVault, _ string) {
			// Get's entry was read at 0, the key set at 30m: at 55m only
			// Get's refresh (at 45-54m) has run.
			time.Sleep(25 * time.Minute)
			synctest.Wait()
			if _, err := p.Get(context.Background(), "K"); err == nil {
				t.Fatal("Get still serves a revoked secret")
			}
		},
		"an Event Grid event": func(t *testing.T, p *Provider, v *fakeVault, version string) {
			h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
			body := `{"eventType":"Microsoft.KeyVault.SecretExpired","data":{"Id":"` + fakeVaultURL + `secrets/K/` + version + `"}}`
			if w := deliver(h, "POST", "/e", []byte(body), nil); w.Code != http.StatusOK {
				t.Fatal(w.Code)
			}
			synctest.Wait()
		},
		"the key set's own refresh": func(t *testing.T, p *Provider, v *fakeVault, _ string) {
			time.Sleep(time.Hour) // past the key set's refresh at 30m + 45-54m
			synctest.Wait()
		},
	}
	for rname, revoke := range revocations {
		for pname, path := range paths {
			t.Run(rname+"/"+pname, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					v := newFakeVault()
					v1 := v.set("K", "key-1")
					p := v.newProvider(t, nil)
					ctx := context.Background()
					mustGet(t, p, "K", "key-1")
					time.Sleep(30 * time.Minute)
					if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
						t.Fatal(err)
					}
					revoke(v, v1)
					path(t, p, v, v1)
					if _, err := p.Verify(ctx, "K", "key-1"); err == nil || errors.Is(err, ErrMismatch) {
						t.Fatalf("Verify after the vault refused the secret: %v, want the refusal", err)
					}
					if _, err := p.Get(ctx, "K"); err == nil {
						t.Fatal("Get still serves the secret")
					}
				})
			})
		}
	}
}

// TestVerifyPreviousVersionDisabledStopsOnRefresh disables the replaced
// version during the overlap: once Refresh returns, its key is refused
// while the latest is still accepted.
func TestVerifyPreviousVersionDisabledStopsOnRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v1 := v.set("K", "key-1")
		time.Sleep(time.Minute)
		v.set("K", "key-2")
		p := v.newProvider(t, nil)
		ctx := context.Background()
		if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
			t.Fatal(err)
		}
		v.disable("K", v1)
		if _, err := p.Refresh(ctx, "K"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Verify(ctx, "K", "key-1"); !errors.Is(err, ErrMismatch) {
			t.Fatalf("disabled previous version after Refresh: %v", err)
		}
		if _, err := p.Verify(ctx, "K", "key-2"); err != nil {
			t.Fatalf("latest: %v", err)
		}
	})
}

// TestVerifyWindowsAreCheckedWhenAKeyIsPresented: the overlap's end, a
// previous version's exp and the latest's nbf and exp hold at the moment
// of the call, with no read of the vault in between.
func TestVerifyWindowsAreCheckedWhenAKeyIsPresented(t *testing.T) {
	t.Run("overlap", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v := newFakeVault()
			v.set("K", "key-1")
			p := v.newProvider(t, &Options{VerifyOverlap: 2 * time.Second})
			ctx := context.Background()
			if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Second)
			if _, err := p.Rotate(ctx, "K", "key-2", nil); err != nil {
				t.Fatal(err)
			}
			reads := v.requests.Load()
			time.Sleep(time.Second)
			if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
				t.Fatalf("old key 1 s into a 2 s overlap: %v", err)
			}
			time.Sleep(time.Second)
			if _, err := p.Verify(ctx, "K", "key-1"); !errors.Is(err, ErrMismatch) {
				t.Fatalf("old key 2 s after Rotate, overlap 2 s: %v", err)
			}
			if _, err := p.Verify(ctx, "K", "key-2"); err != nil {
				t.Fatal(err)
			}
			if v.requests.Load() != reads {
				t.Fatal("the check read the vault")
			}
		})
	})
	t.Run("previous exp", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v := newFakeVault()
			v.set("K", "key-1", withExp(time.Now().Add(4*time.Second)))
			time.Sleep(time.Second)
			v.set("K", "key-2")
			p := v.newProvider(t, nil)
			ctx := context.Background()
			if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
				t.Fatalf("before exp: %v", err)
			}
			time.Sleep(3 * time.Second)
			if _, err := p.Verify(ctx, "K", "key-1"); !errors.Is(err, ErrMismatch) {
				t.Fatalf("after exp: %v", err)
			}
		})
	})
	t.Run("latest nbf and exp", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v := newFakeVault()
			v.set("K", "key-1", withNbf(time.Now().Add(time.Minute)), withExp(time.Now().Add(2*time.Minute)))
			p := v.newProvider(t, nil)
			ctx := context.Background()
			if _, err := p.Verify(ctx, "K", "key-1"); !errors.Is(err, ErrMismatch) {
				t.Fatalf("before nbf: %v", err)
			}
			time.Sleep(time.Minute)
			if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
				t.Fatalf("between nbf and exp: %v", err)
			}
			time.Sleep(time.Minute)
			if _, err := p.Verify(ctx, "K", "key-1"); !errors.Is(err, ErrMismatch) {
				t.Fatalf("after exp: %v", err)
			}
		})
	})
}

// TestVerifyOnlySecretFollowsRefreshAndEvents: a secret used only through
// Verify accepts a new version as soon as Refresh returns, and when an
// Event Grid event announces one; a secret also read by Get accepts it as
// soon as Refresh returns, with no moment of refusal.
func TestVerifyOnlySecretFollowsRefreshAndEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "key-1")
		v.set("G", "g-1")
		p := v.newProvider(t, nil)
		ctx := context.Background()
		if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		v.set("K", "key-2")
		if _, err := p.Refresh(ctx, "K"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Verify(ctx, "K", "key-2"); err != nil {
			t.Fatalf("new key after Refresh: %v", err)
		}

		time.Sleep(time.Minute)
		v3 := v.set("K", "key-3")
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
		body := `{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"` + fakeVaultURL + `secrets/K/` + v3 + `"}}`
		if w := deliver(h, "POST", "/e", []byte(body), nil); w.Code != http.StatusOK {
			t.Fatal(w.Code)
		}
		time.Sleep(time.Second) // the key set's requests, paced
		if st := p.Stats(); st.EventsActedOn != 1 {
			t.Fatalf("EventsActedOn = %d, want 1", st.EventsActedOn)
		}
		if _, err := p.Verify(ctx, "K", "key-3"); err != nil {
			t.Fatalf("new key after the event: %v", err)
		}

		// Read by Get and Verify: Refresh returns once both serve the new version.
		mustGet(t, p, "G", "g-1")
		if _, err := p.Verify(ctx, "G", "g-1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		v.set("G", "g-2")
		if _, err := p.Refresh(ctx, "G"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Verify(ctx, "G", "g-2"); err != nil {
			t.Fatalf("Verify right after Refresh: %v", err)
		}
		mustGet(t, p, "G", "g-2")
	})
}

// TestPreloadVerify warms key sets so that Verify makes no request, and
// reports bad names before any request and missing secrets by name.
func TestPreloadVerify(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("A", "a-1")
		v.set("B", "b-1")
		p := v.newProvider(t, nil)
		ctx := context.Background()
		if err := p.PreloadVerify(ctx, "A", "bad name"); !errors.Is(err, ErrInvalidName) || v.requests.Load() != 0 {
			t.Fatalf("bad name: %v after %d requests", err, v.requests.Load())
		}
		if err := p.PreloadVerify(ctx, "A", "B", "a"); err != nil {
			t.Fatal(err)
		}
		reads := v.requests.Load()
		for _, c := range [][2]string{{"A", "a-1"}, {"B", "b-1"}, {"a", "a-1"}} {
			if _, err := p.Verify(ctx, c[0], c[1]); err != nil {
				t.Fatal(err)
			}
		}
		if v.requests.Load() != reads {
			t.Fatal("Verify after PreloadVerify read the vault")
		}
		err := p.PreloadVerify(ctx, "A", "Missing")
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"Missing"`) {
			t.Fatalf("missing: %v", err)
		}
	})
}

// TestSelectPreviousNeverAdmitsTooOld checks the ordering rule on random
// histories: versions created in few distinct seconds, listed in random
// order, the Provider having seen a random part of the sequence. Whatever
// the listing, no version more than limit rotations old is accepted, and
// the version just replaced is accepted whenever it can be told apart.
func TestSelectPreviousNeverAdmitsTooOld(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for trial := range 5000 {
		n := 2 + rng.IntN(7) // versions, the last the latest
		truth := make([]listedVersion, n)
		sec := 0
		for i := range truth {
			if i > 0 && rng.IntN(3) == 0 {
				sec++
			}
			truth[i] = listedVersion{version: fmt.Sprintf("v%02d", i), created: base.Add(time.Duration(sec) * time.Second), enabled: true}
		}
		var history []string
		for i := range truth {
			if i == n-1 || rng.IntN(2) == 0 {
				history = append(history, truth[i].version)
			}
		}
		listed := slices.Clone(truth)
		rng.Shuffle(len(listed), func(i, j int) { listed[i], listed[j] = listed[j], listed[i] })
		latest := Secret{Version: truth[n-1].version, Created: truth[n-1].created}
		limit := 1 + rng.IntN(3)
		got := selectPrevious(latest, listed, history, base.Add(time.Hour), 24*time.Hour, limit)

		allowed := map[string]bool{}
		for i := n - 2; i >= 0 && i >= n-1-limit; i-- {
			allowed[truth[i].version] = true
		}
		for _, g := range got {
			if !allowed[g.version] {
				t.Fatalf("trial %d: accepted %s, more than %d rotations old (truth %v, history %v, got %v)", trial, g.version, limit, truth, history, got)
			}
		}
		// The version just replaced can be told apart when no other
		// version shares its second, or the Provider saw every one that
		// does become the latest: then it is accepted.
		just := truth[n-2]
		canTell := true
		for _, x := range truth[:n-1] {
			if x.created.Equal(just.created) && x.version != just.version &&
				(!slices.Contains(history, x.version) || !slices.Contains(history, just.version)) {
				canTell = false
			}
		}
		found := slices.ContainsFunc(got, func(g previousVersion) bool { return g.version == just.version })
		if canTell && !found {
			t.Fatalf("trial %d: the version just replaced (%s) was refused (truth %v, history %v, limit %d, got %v)", trial, just.version, truth, history, limit, got)
		}
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// TestVerifySameSecondVersionsOfARealListing replays the real listing of
// TestListSecretVersions.json (azsecrets v0.12.0's recordings, made against
// a real vault): three versions created in the same second, listed in
// version-id order (4fda…, a710…, c512…), while they were written a710,
// c512, 4fda. The GETs of each version are answered with the recording's
// own PUT answers for it.
func TestVerifySameSecondVersionsOfARealListing(t *testing.T) {
	rec := sdkRecording(t, "TestListSecretVersions.json")
	var puts []int // entries answering the PUTs, in order
	for i, e := range rec.Entries {
		if e.RequestMethod == http.MethodPut && e.StatusCode == http.StatusOK {
			puts = append(puts, i)
		}
	}
	if len(puts) != 3 {
		t.Fatalf("recording has %d PUT answers, want 3", len(puts))
	}
	versionOf := func(i int) string {
		var b struct{ ID string }
		mustUnmarshal(t, rec.Entries[i].ResponseBody, &b)
		_, ver, _ := parseSecretID(b.ID)
		return ver
	}
	valueOf := func(i int) string { // "value0", "value1", "value2"
		var b struct{ Value string }
		mustUnmarshal(t, rec.Entries[i].ResponseBody, &b)
		return b.Value
	}
	first, second, latest := puts[0], puts[1], puts[2]
	if !strings.HasPrefix(versionOf(latest), "4fda") || !strings.HasPrefix(versionOf(second), "c512") {
		t.Fatalf("unexpected recording: %s %s", versionOf(second), versionOf(latest))
	}
	u, _ := url.Parse(rec.Entries[0].RequestURI)
	name := strings.TrimPrefix(u.Path, "/secrets/")

	// serve answers the recorded challenge, the recorded list pages in
	// order, a GET of a version with the PUT answer that created it, a GET
	// of the latest with the last PUT's answer, and the PUTs in order.
	serve := func() func(w http.ResponseWriter, r *http.Request, challenge bool) {
		var mu sync.Mutex
		used := map[int]bool{}
		return func(w http.ResponseWriter, r *http.Request, challenge bool) {
			mu.Lock()
			defer mu.Unlock()
			pick := -1
			for i, e := range rec.Entries {
				eu, _ := url.Parse(e.RequestURI)
				switch {
				case pick >= 0 || used[i]:
				case challenge:
					if e.StatusCode == http.StatusUnauthorized {
						pick = i
					}
				case r.Method == http.MethodPut && e.RequestMethod == http.MethodPut && e.StatusCode == http.StatusOK:
					pick = i
				case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/versions") && e.RequestMethod == http.MethodGet && eu.Path == r.URL.Path:
					pick = i
				}
			}
			if !challenge && r.Method == http.MethodGet && !strings.HasSuffix(r.URL.Path, "/versions") {
				pick = latest
				for _, i := range puts {
					if strings.HasSuffix(r.URL.Path, "/"+versionOf(i)) {
						pick = i
					}
				}
			} else if pick >= 0 {
				used[pick] = true
			}
			if pick < 0 {
				t.Errorf("no recorded answer for %s %s", r.Method, r.URL.Path)
				http.Error(w, "not recorded", http.StatusTeapot)
				return
			}
			e := rec.Entries[pick]
			for k, v := range e.ResponseHeaders {
				if k != "Content-Length" {
					w.Header().Set(k, v)
				}
			}
			w.WriteHeader(e.StatusCode)
			w.Write(e.ResponseBody)
		}
	}
	years := &Options{VerifyOverlap: 10 * 365 * 24 * time.Hour, VerifyPrevious: 1} // the recording is from 2023

	// A Provider that wrote the three versions knows their order: with
	// VerifyPrevious 1 it accepts the one the latest replaced, not the
	// one before.
	v := newHTTPSVault(t, strings.ToLower(u.Host), serve())
	p := v.newProvider(t, years)
	for range 3 {
		if _, err := p.Rotate(t.Context(), name, "value-from-the-recording", nil); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := acceptedVersions(t, p, name), []string{versionOf(latest), versionOf(second)}; !slices.Equal(got, want) {
		t.Errorf("writer, VerifyPrevious 1: accepted %v, want %v", got, want)
	}

	// A Provider that saw none of it cannot tell a710 from c512: it
	// refuses both with VerifyPrevious 1 rather than risk the older, and
	// accepts both with 2.
	for limit, want := range map[int][]string{1: {versionOf(latest)}, 2: {versionOf(latest), versionOf(first), versionOf(second)}} {
		v := newHTTPSVault(t, strings.ToLower(u.Host), serve())
		p := v.newProvider(t, &Options{VerifyOverlap: years.VerifyOverlap, VerifyPrevious: limit})
		got := acceptedVersions(t, p, name)
		slices.Sort(got[1:])
		if !slices.Equal(got, want) {
			t.Errorf("cold, VerifyPrevious %d: accepted %v, want %v", limit, got, want)
		}
	}
	// Its versions' nbf is in 2040: none may match a key today.
	if _, err := p.Verify(t.Context(), name, valueOf(latest)); !errors.Is(err, ErrMismatch) {
		t.Errorf("a version before its nbf: %v", err)
	}
}

// acceptedVersions makes p read name's key set (Verify) and returns the
// versions it accepts, the latest first.
func acceptedVersions(t *testing.T, p *Provider, name string) []string {
	t.Helper()
	if _, err := p.Verify(t.Context(), name, "not-a-key"); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Verify: %v", err)
	}
	var out []string
	for _, s := range p.idx.load(strings.ToLower(name)).verifier().state.Load().keys.accepted {
		out = append(out, s.Version)
	}
	return out
}

// TestVerifyRevocationOverHTTPS: on the local vault over HTTPS, a disabled
// and a deleted secret stop verifying as soon as Refresh returns.
func TestVerifyRevocationOverHTTPS(t *testing.T) {
	for _, revoke := range []func(s *kvtest.Server) error{
		func(s *kvtest.Server) error { return s.SetEnabled("K", "", false) },
		func(s *kvtest.Server) error { return s.DeleteSecret("K") },
	} {
		srv := kvtest.NewTestServer(t, nil)
		srv.SetSecret("K", "key-1", nil)
		p, err := NewProvider(srv.URL(), srv.Credential(), &Options{ClientOptions: srv.ClientOptions()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Verify(t.Context(), "K", "key-1"); err != nil {
			t.Fatal(err)
		}
		if err := revoke(srv); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Refresh(t.Context(), "K"); err == nil {
			t.Fatal("Refresh succeeded")
		}
		if _, err := p.Verify(t.Context(), "K", "key-1"); err == nil {
			t.Fatal("a revoked key still verifies")
		}
		p.Close()
	}
}
