package kvsecrets

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestRotateWritesCachesAndFiresOnRotate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v1 := v.set("K", "key-1")
		var events []RotationEvent
		p := v.newProvider(t, &Options{OnRotate: func(ev RotationEvent) { events = append(events, ev) }})
		mustGet(t, p, "K", "key-1")
		s, err := p.Rotate(context.Background(), "K", "key-2", &RotateOptions{ContentType: "application/x-api-key", Tags: map[string]string{"by": "test"}})
		if err != nil {
			t.Fatal(err)
		}
		if s.Value() != "key-2" || s.Version == v1 || !s.Expires.Equal(time.Now().Add(180*24*time.Hour).Truncate(time.Second)) || s.ContentType != "application/x-api-key" {
			t.Fatalf("Rotate = %v (exp %v)", s, s.Expires)
		}
		reads := v.requests.Load()
		mustGet(t, p, "K", "key-2") // cached at once
		if v.requests.Load() != reads {
			t.Fatal("Get after Rotate read the vault")
		}
		if len(events) != 1 || events[0].OldVersion != v1 || events[0].NewVersion != s.Version || events[0].Vault != fakeVaultURL {
			t.Fatalf("events = %+v", events)
		}
		if st := p.Stats(); st.Writes != 1 || st.Rotations != 1 {
			t.Fatalf("stats = %+v", st)
		}
		// A secret not cached before: OnRotate still tells of the new version.
		if _, err := p.Rotate(context.Background(), "Fresh", "f-1", &RotateOptions{Validity: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if len(events) != 2 || events[1].OldVersion != "" || events[1].Name != "Fresh" {
			t.Fatalf("events = %+v", events)
		}
	})
}

func TestRotateRefusesBadInputAndExplainsForbidden(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "key-1")
		p := v.newProvider(t, nil)
		mustGet(t, p, "K", "key-1")
		ctx := context.Background()
		secret := "super_secret/value+"
		for _, tc := range []struct {
			name, value string
			o           *RotateOptions
		}{
			{"bad name", secret, nil},
			{"K", "", nil},
			{"K", strings.Repeat("x", 25*1024+1), nil},
			{"K", secret, &RotateOptions{ContentType: strings.Repeat("c", 256)}},
			{"K", secret, &RotateOptions{Validity: -time.Hour}},
		} {
			_, err := p.Rotate(ctx, tc.name, tc.value, tc.o)
			if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "xxxx") {
				t.Errorf("Rotate(%q) = %v", tc.name, err)
			}
		}
		if v.writes != 0 {
			t.Fatalf("writes = %d, want none", v.writes)
		}
		v.failWrites = http.StatusForbidden
		_, err := p.Rotate(ctx, "K", secret, nil)
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "Key Vault Secrets Officer") || strings.Contains(err.Error(), secret) {
			t.Fatalf("forbidden write: %v", err)
		}
		mustGet(t, p, "K", "key-1") // nothing cached was lost
	})
}

func TestGenerateAPIKey(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		k, err := GenerateAPIKey(0)
		if err != nil || len(k) != 43 || seen[k] {
			t.Fatalf("GenerateAPIKey = %q, %v", k, err)
		}
		seen[k] = true
		for _, c := range k {
			if !strings.ContainsRune(apiKeyAlphabet, c) {
				t.Fatalf("character %q outside the URL-safe alphabet", c)
			}
		}
	}
	if k, err := GenerateAPIKey(64); err != nil || len(k) != 64 {
		t.Fatal(k, err)
	}
	for _, n := range []int{-1, 1, 21, 4097} {
		if _, err := GenerateAPIKey(n); err == nil {
			t.Errorf("GenerateAPIKey(%d) accepted", n)
		}
	}
}

func TestVerifyAcceptsOldAndNewThroughTheOverlap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v1 := v.set("ApiKey", "key-1")
		p := v.newProvider(t, nil)
		ctx := context.Background()
		verify := func(key string) (string, error) {
			s, err := p.Verify(ctx, "ApiKey", key)
			return s.Version, err
		}
		if ver, err := verify("key-1"); err != nil || ver != v1 {
			t.Fatalf("Verify(key-1) = %q, %v", ver, err)
		}
		_, err := verify("wrong-key")
		if !errors.Is(err, ErrMismatch) || strings.Contains(err.Error(), "wrong-key") {
			t.Fatalf("Verify(wrong) = %v", err)
		}

		time.Sleep(time.Hour)
		s2, err := p.Rotate(ctx, "ApiKey", "key-2", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Rotate returns once Verify accepts the new key.
		if ver, err := verify("key-2"); err != nil || ver != s2.Version {
			t.Fatalf("new key: %q, %v", ver, err)
		}
		if ver, err := verify("key-1"); err != nil || ver != v1 {
			t.Fatalf("old key during the overlap: %q, %v", ver, err)
		}
		reads := v.requests.Load()
		for range 100 {
			verify("key-1")
			verify("key-2")
			verify("nope")
		}
		if v.requests.Load() != reads {
			t.Fatal("cached Verify read the vault")
		}

		// 24h after the rotation, the old key is refused; the background
		// refresh of the key set sees the overlap end.
		time.Sleep(25 * time.Hour)
		synctest.Wait()
		if _, err := verify("key-1"); !errors.Is(err, ErrMismatch) {
			t.Fatalf("old key after the overlap: %v", err)
		}
		if _, err := verify("key-2"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestVerifyLimitsAndExclusions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		for i := 1; i <= 5; i++ {
			v.set("K", "key-"+string(rune('0'+i)))
			time.Sleep(time.Minute)
		}
		p := v.newProvider(t, &Options{VerifyPrevious: 2})
		ctx := context.Background()
		for key, ok := range map[string]bool{"key-5": true, "key-4": true, "key-3": true, "key-2": false, "key-1": false} {
			_, err := p.Verify(ctx, "K", key)
			if (err == nil) != ok {
				t.Errorf("Verify(%s) = %v, want accepted %v", key, err, ok)
			}
		}
		// A disabled previous version stops being accepted at the next refresh.
		vers := v.secrets["k"].versions
		v.disable("K", vers[3].id) // key-4
		time.Sleep(time.Hour)
		synctest.Wait()
		if _, err := p.Verify(ctx, "K", "key-4"); !errors.Is(err, ErrMismatch) {
			t.Fatalf("disabled version: %v", err)
		}
		if _, err := p.Verify(ctx, "K", "key-3"); err != nil {
			t.Fatalf("key-3: %v", err)
		}
	})
}

func TestVerifyStaleAndRevocation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "key-1")
		p := v.newProvider(t, &Options{TTL: time.Minute})
		ctx := context.Background()
		if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
			t.Fatal(err)
		}
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "" })
		time.Sleep(10 * time.Minute)
		if _, err := p.Verify(ctx, "K", "key-1"); err != nil {
			t.Fatalf("during an outage: %v", err)
		}
		v.setFail(nil)
		v.delete("K")
		time.Sleep(3 * time.Minute)
		synctest.Wait()
		if _, err := p.Verify(ctx, "K", "key-1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after deletion: %v", err)
		}
		if _, err := p.Verify(ctx, "bad name", "key-1"); !errors.Is(err, ErrInvalidName) {
			t.Fatal(err)
		}
	})
}
