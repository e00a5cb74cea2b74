package kvsecrets

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/kvsecrets/kvsecrets/internal/recordings"
)

// Replays of real Key Vault traffic. The recordings are served byte for
// byte (status, headers, body) to the real client over loopback HTTPS,
// challenge first, and the Provider must read them as the service meant.

// replay serves rec: a request without the token gets the recorded 401; any
// other gets the next unused entry of the same method and path.
func replay(t *testing.T, rec *recordings.Recording, o *Options) (*httpsVault, *Provider) {
	t.Helper()
	u, err := url.Parse(rec.Entries[0].RequestURI)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	used := map[int]bool{}
	answer := func(w http.ResponseWriter, req *http.Request, challenge bool) {
		mu.Lock()
		defer mu.Unlock()
		for i, e := range rec.Entries {
			eu, err := url.Parse(e.RequestURI)
			if err != nil || used[i] || challenge != (e.StatusCode == http.StatusUnauthorized) {
				continue
			}
			if !challenge {
				if e.RequestMethod != req.Method || !strings.EqualFold(eu.Path, req.URL.Path) {
					continue
				}
				used[i] = true
			}
			for k, v := range e.ResponseHeaders {
				if k != "Content-Length" {
					w.Header().Set(k, v)
				}
			}
			w.WriteHeader(e.StatusCode)
			if len(e.ResponseBody) > 0 && string(e.ResponseBody) != "null" {
				w.Write(e.ResponseBody)
			}
			return
		}
		t.Errorf("replay: no recorded answer for %s %s (challenge %v)", req.Method, req.URL.Path, challenge)
		http.Error(w, "not recorded", http.StatusTeapot)
	}
	v := newHTTPSVault(t, strings.ToLower(u.Host), answer)
	return v, v.newProvider(t, o)
}

func loadRecording(t *testing.T, path string) *recordings.Recording {
	t.Helper()
	rec, err := recordings.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func sdkRecording(t *testing.T, name string) *recordings.Recording {
	t.Helper()
	dir, err := recordings.SDKDir()
	if err != nil {
		t.Fatal(err)
	}
	return loadRecording(t, filepath.Join(dir, name))
}

func TestReplayDisabledSecret(t *testing.T) {
	v, p := replay(t, loadRecording(t, filepath.Join(recordings.Dir(), "recording_cant_get_a_disabled_secret.json")), nil)
	_, err := p.Get(context.Background(), "CRUDSecretName-cantgetadisabledsecret-")
	var re *azcore.ResponseError
	if !errors.Is(err, ErrDisabled) || !errors.As(err, &re) || re.StatusCode != 403 || !strings.Contains(err.Error(), "Forbidden/SecretDisabled") {
		t.Fatalf("err = %v, want ErrDisabled from the recorded 403", err)
	}
	if v.unauthenticated.Load() != 1 {
		t.Fatal("the recorded challenge was not used")
	}
}

func TestReplayMissingSecret(t *testing.T) {
	_, p := replay(t, loadRecording(t, filepath.Join(recordings.Dir(), "recording_can_get_a_secret_non_existing.json")), nil)
	_, err := p.Get(context.Background(), "CRUDSecretName-cangetasecretNonExisting-")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "404 SecretNotFound") {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestReplaySDKRecordingNotYetValidSecret(t *testing.T) {
	for _, enforce := range []bool{false, true} {
		_, p := replay(t, sdkRecording(t, "TestCRUD.json"), &Options{EnforceValidity: enforce})
		s, err := p.GetSecret(context.Background(), "secret518723441")
		if enforce {
			if !errors.Is(err, ErrNotYetValid) {
				t.Fatalf("EnforceValidity: err = %v, want ErrNotYetValid (nbf is in 2030)", err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if s.Value() != "value518723441" || s.ContentType != "big secret" || s.Version != "d0215295974a4da8ab877cb69fefd5ec" ||
			s.NotBefore.Year() != 2030 || s.Created.IsZero() || !s.Expires.IsZero() {
			t.Fatalf("secret = %v nbf %v", s, s.NotBefore)
		}
	}
}

func TestReplaySDKRecordingRecoveredSecret(t *testing.T) {
	// TestRecover reads a deleted secret (404) and, after recovery, again (200).
	_, p := replay(t, sdkRecording(t, "TestRecover.json"), &Options{NegativeTTL: time.Hour})
	if _, err := p.Get(context.Background(), "secret422508987"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("first read = %v, want ErrNotFound", err)
	}
	if _, err := p.Get(context.Background(), "secret422508987"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remembered miss = %v", err)
	}
	s, err := p.Refresh(context.Background(), "secret422508987")
	if err != nil || s.Value() == "" {
		t.Fatalf("after recovery: %v, %v", s, err)
	}
	mustGet(t, p, "secret422508987", s.Value())
}
