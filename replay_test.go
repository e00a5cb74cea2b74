package kvsecrets

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// Replays of real Key Vault traffic. The recordings are served byte for
// byte (status, headers, body) to the real client over loopback HTTPS,
// challenge first, and the Provider must read them as the service meant.

type recording struct {
	Entries []struct {
		RequestURI      string            `json:"RequestUri"`
		RequestMethod   string            `json:"RequestMethod"`
		StatusCode      int               `json:"StatusCode"`
		ResponseHeaders map[string]string `json:"ResponseHeaders"`
		ResponseBody    json.RawMessage   `json:"ResponseBody"`
	} `json:"Entries"`
}

// replayer answers each request with the next unused recorded entry of the
// same method and path; requests without a token get the recorded 401.
type replayer struct {
	t    testing.TB
	rec  recording
	mu   sync.Mutex
	used map[int]bool
	host string // the recorded vault host
}

func loadRecording(t testing.TB, path string) *replayer {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("recording: %v", err)
	}
	r := &replayer{t: t, used: map[int]bool{}}
	if err := json.Unmarshal(b, &r.rec); err != nil {
		t.Fatalf("recording %s: %v", path, err)
	}
	u, err := url.Parse(r.rec.Entries[0].RequestURI)
	if err != nil {
		t.Fatal(err)
	}
	r.host = strings.ToLower(u.Host)
	return r
}

func (r *replayer) vault(t testing.TB) *httpsVault {
	v := newHTTPSVault(t, r.host, r)
	// The replayer does its own authentication: the recorded challenge.
	v.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Authorization") != "Bearer "+v.token {
			v.unauthenticated.Add(1)
			r.answer(w, req, true)
			return
		}
		v.authorised.Add(1)
		r.answer(w, req, false)
	})
	return v
}

func (r *replayer) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.answer(w, req, false) }

func (r *replayer) answer(w http.ResponseWriter, req *http.Request, challenge bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.rec.Entries {
		u, err := url.Parse(e.RequestURI)
		if err != nil || r.used[i] {
			continue
		}
		if challenge != (e.StatusCode == http.StatusUnauthorized) {
			continue
		}
		if !challenge && (e.RequestMethod != req.Method || !strings.EqualFold(u.Path, req.URL.Path)) {
			continue
		}
		if !challenge {
			r.used[i] = true
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
	r.t.Errorf("replay: no recorded answer for %s %s (challenge %v)", req.Method, req.URL.Path, challenge)
	http.Error(w, "not recorded", http.StatusTeapot)
}

const realdata = "../shared/realdata/recordings/"

func TestReplayDisabledSecret(t *testing.T) {
	r := loadRecording(t, realdata+"recording_cant_get_a_disabled_secret.json")
	v := r.vault(t)
	p, _ := v.newProvider(t, nil)
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
	r := loadRecording(t, realdata+"recording_can_get_a_secret_non_existing.json")
	p, _ := r.vault(t).newProvider(t, nil)
	_, err := p.Get(context.Background(), "CRUDSecretName-cangetasecretNonExisting-")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "404 SecretNotFound") {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

// sdkRecordings returns the folder of recordings that azsecrets v0.12.0
// ships, recorded against a real vault (host fakevault.local).
func sdkRecordings(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json",
		"github.com/Azure/azure-sdk-for-go/sdk/keyvault/azsecrets@v0.12.0").Output()
	if err != nil {
		t.Fatalf("go mod download of the azsecrets v0.12.0 recordings: %v (needs the Go module proxy or cache)", err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download: %s", out)
	}
	return filepath.Join(m.Dir, "testdata", "recordings")
}

func TestReplaySDKRecordingNotYetValidSecret(t *testing.T) {
	dir := sdkRecordings(t)
	for _, enforce := range []bool{false, true} {
		r := loadRecording(t, filepath.Join(dir, "TestCRUD.json"))
		p, _ := r.vault(t).newProvider(t, &Options{EnforceValidity: enforce})
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
	r := loadRecording(t, filepath.Join(sdkRecordings(t), "TestRecover.json"))
	p, _ := r.vault(t).newProvider(t, &Options{NegativeTTL: time.Hour})
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
