package hostile_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if kvlocalBin != "" {
			os.RemoveAll(filepath.Dir(kvlocalBin))
		}
		os.Exit(code)
	}))
}

// raw sends one request to s with an optional bearer token.
func raw(t *testing.T, s *kvtest.Server, method, pathAndQuery, token string, body []byte, hdr http.Header) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, strings.TrimSuffix(s.URL(), "/")+pathAndQuery, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, pathAndQuery, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

type got struct {
	Method string
	URL    string
	Header http.Header
	Body   []byte
}

// hook is a subscriber that answers both handshakes correctly and then
// answers every notification with status(n) (n counts notifications from 1).
type hook struct {
	mu       sync.Mutex
	reqs     []got
	n        int
	status   func(n int) int
	onNotify func(r *http.Request, body []byte)
	// handshake behaviour
	badHandshake bool
}

func (h *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.reqs = append(h.reqs, got{r.Method, r.URL.String(), r.Header.Clone(), body})
	h.mu.Unlock()
	if r.Method == http.MethodOptions {
		if h.badHandshake {
			w.WriteHeader(200)
			return
		}
		w.Header().Set("WebHook-Allowed-Origin", r.Header.Get("WebHook-Request-Origin"))
		w.WriteHeader(200)
		return
	}
	if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
		var evs []struct {
			Data struct {
				ValidationCode string `json:"validationCode"`
			} `json:"data"`
		}
		_ = json.Unmarshal(body, &evs)
		if h.badHandshake || len(evs) == 0 {
			w.WriteHeader(200)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"validationResponse": evs[0].Data.ValidationCode})
		return
	}
	h.mu.Lock()
	h.n++
	n := h.n
	st := 200
	if h.status != nil {
		st = h.status(n)
	}
	f := h.onNotify
	h.mu.Unlock()
	if f != nil {
		f(r, body)
	}
	w.WriteHeader(st)
}

func (h *hook) all() []got {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]got(nil), h.reqs...)
}

// notifications returns the non-handshake requests.
func (h *hook) notifications() []got {
	var out []got
	for _, g := range h.all() {
		if g.Method == http.MethodOptions || g.Header.Get("aeg-event-type") == "SubscriptionValidation" {
			continue
		}
		out = append(out, g)
	}
	return out
}

type ev struct {
	ID        string          `json:"id"`
	Topic     string          `json:"topic"`
	Source    string          `json:"source"`
	Subject   string          `json:"subject"`
	EventType string          `json:"eventType"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
}

func (e ev) kind() string {
	if e.EventType != "" {
		return e.EventType
	}
	return e.Type
}

// events decodes a notification body of either schema.
func events(t *testing.T, b []byte) []ev {
	t.Helper()
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var out []ev
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		return out
	}
	var one ev
	if err := json.Unmarshal(b, &one); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return []ev{one}
}

func mustInProcess(t *testing.T, o *kvtest.Options) *kvtest.Server {
	t.Helper()
	s, err := kvtest.NewInProcess(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func delTypes(ds []kvtest.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.EventType[len("Microsoft.KeyVault."):]+"/"+d.Secret+"/"+string(d.Outcome))
	}
	return out
}

func jsonValid(b []byte) bool { return json.Valid(b) }

func errorsAs(err error, target any) bool { return errors.As(err, target) }
