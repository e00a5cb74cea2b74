package hostile_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

var guidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

var kvHeaders = []string{
	"x-ms-request-id", "x-ms-keyvault-service-version", "x-ms-keyvault-region",
	"x-ms-keyvault-network-info", "Cache-Control", "Pragma", "Expires",
	"Strict-Transport-Security", "X-Content-Type-Options",
}

// Every kind of answer: challenge, 404, 429, faults, purge 204, 400
// api-version, 405, unknown path, restore errors, HEAD, OPTIONS.
func TestHostileHeadersOnEveryKindOfAnswer(t *testing.T) {
	s := kvtest.NewTestServer(t, nil)
	s.SetSecret("A", "va", nil)
	s.SetSecret("P", "vp", nil)
	tok, _ := s.IssueToken()
	v := "?api-version=" + kvtest.LatestAPIVersion
	seen := map[string]string{}
	check := func(what string, st int, h http.Header, wantStatus int) {
		t.Helper()
		if wantStatus != 0 && st != wantStatus {
			t.Errorf("%s: status %d, want %d", what, st, wantStatus)
		}
		for _, k := range kvHeaders {
			if h.Get(k) == "" {
				t.Errorf("%s (%d): header %s missing", what, st, k)
			}
		}
		id := h.Get("x-ms-request-id")
		if id != "" && !guidRE.MatchString(id) {
			t.Errorf("%s: x-ms-request-id %q is not a lowercase GUID", what, id)
		}
		if prev, dup := seen[id]; dup && id != "" {
			t.Errorf("%s: x-ms-request-id %s already used by %s", what, id, prev)
		}
		seen[id] = what
		if c := h.Get("x-ms-client-request-id"); c != "" && c != "cid-"+strings.ReplaceAll(what, " ", "_") {
			t.Errorf("%s: x-ms-client-request-id %q echoed wrongly", what, c)
		}
	}
	do := func(what, method, p, token string, body []byte, want int) http.Header {
		t.Helper()
		st, _, h := raw(t, s, method, p, token, body, http.Header{"X-Ms-Client-Request-Id": {"cid-" + strings.ReplaceAll(what, " ", "_")}})
		check(what, st, h, want)
		if h.Get("x-ms-client-request-id") == "" {
			t.Errorf("%s: client request id not echoed", what)
		}
		return h
	}
	do("challenge", "GET", "/secrets/A"+v, "", nil, 401)
	do("challenge bad token", "GET", "/secrets/A"+v, "nope", nil, 401)
	do("get", "GET", "/secrets/A"+v, tok, nil, 200)
	do("404", "GET", "/secrets/Nope"+v, tok, nil, 404)
	do("bad version", "GET", "/secrets/A?api-version=1.0", tok, nil, 400)
	do("no version", "GET", "/secrets/A", tok, nil, 400)
	do("unknown path", "GET", "/keys/A"+v, tok, nil, 0)
	do("root", "GET", "/"+v, tok, nil, 0)
	do("method", "PATCH", "/secrets"+v, tok, []byte(`{}`), 0)
	do("head", "HEAD", "/secrets/A"+v, tok, nil, 0)
	do("options", "OPTIONS", "/secrets/A"+v, tok, nil, 0)
	do("bad json", "PUT", "/secrets/A"+v, tok, []byte(`{`), 400)
	do("bad name", "GET", "/secrets/bad_name"+v, tok, nil, 0)
	do("restore garbage", "POST", "/secrets/restore"+v, tok, []byte(`{"value":"AAAA"}`), 400)
	do("delete", "DELETE", "/secrets/P"+v, tok, nil, 200)
	do("purge", "DELETE", "/deletedsecrets/P"+v, tok, nil, 204)
	do("purge again", "DELETE", "/deletedsecrets/P"+v, tok, nil, 404)
	s.FailNext(1, kvtest.ServiceUnavailable)
	do("503", "GET", "/secrets/A"+v, tok, nil, 503)
	s.FailNext(1, kvtest.ForbiddenByRbac)
	do("403", "GET", "/secrets/A"+v, tok, nil, 403)
	thr := kvtest.Throttled
	thr.RetryAfter = "3"
	s.FailNext(1, thr)
	do("429 fault", "GET", "/secrets/A"+v, tok, nil, 429)
	s.SetEnabled("A", "", false)
	do("disabled", "GET", "/secrets/A"+v, tok, nil, 403)
	s.SetEnabled("A", "", true)
	s.SetThrottle(1, time.Hour)
	do("throttle ok", "GET", "/secrets/A"+v, tok, nil, 200)
	do("throttled", "GET", "/secrets/A"+v, tok, nil, 429)
	s.SetThrottle(0, 0)

	// RequestLog agrees with the headers.
	for _, r := range s.RequestLog() {
		if r.Status == -1 {
			continue
		}
		if _, ok := seen[r.RequestID]; !ok {
			t.Errorf("log entry %s %s %d: request id %q never answered", r.Method, r.Path, r.Status, r.RequestID)
		}
	}
}

// Two servers must not hand out the same request ids (e.g. a counter seeded
// the same way), and ids must stay unique under concurrency.
func TestHostileRequestIDsUniqueConcurrently(t *testing.T) {
	a := kvtest.NewTestServer(t, nil)
	b := kvtest.NewTestServer(t, &kvtest.Options{VaultName: "other"})
	ids := make(chan string, 400)
	done := make(chan struct{})
	for _, s := range []*kvtest.Server{a, b} {
		for i := 0; i < 4; i++ {
			go func() {
				defer func() { done <- struct{}{} }()
				for j := 0; j < 50; j++ {
					_, _, h := raw(t, s, "GET", "/secrets/x?api-version=7.4", "", nil, nil)
					ids <- h.Get("x-ms-request-id")
				}
			}()
		}
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if id == "" || seen[id] {
			t.Fatalf("request id %q empty or repeated", id)
		}
		seen[id] = true
	}
}

func TestHostileAPIVersionEdgeCases(t *testing.T) {
	s := kvtest.NewTestServer(t, nil)
	s.SetSecret("A", "va", nil)
	tok, _ := s.IssueToken()
	t.Logf("APIVersions: %v", kvtest.APIVersions())
	published := []string{"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", kvtest.LatestAPIVersion}
	for _, v := range published {
		st, body, _ := raw(t, s, "GET", "/secrets/A?api-version="+url.QueryEscape(v), tok, nil, nil)
		if st != 200 {
			t.Errorf("published %q: %d %s", v, st, body)
		}
	}
	for _, v := range kvtest.APIVersions() {
		st, body, _ := raw(t, s, "GET", "/secrets/A?api-version="+url.QueryEscape(v), tok, nil, nil)
		if st != 200 {
			t.Errorf("listed %q refused: %d %s", v, st, body)
		}
	}
	bad := []string{
		"api-version=",
		"api-version=7.4%20",
		"api-version=%207.4",
		"api-version=7.4%00",
		"api-version=7.4.0",
		"api-version=07.4",
		"api-version=7.4-PREVIEW",
		"api-version=7",
		"api-version=2026-04-01-preview-x",
		"api-version=2099-01-01",
		"api-version=7.4;",
		"api-version=7.4%0a",
		"",
		"apiversion=7.4",
	}
	for _, q := range bad {
		st, body, h := raw(t, s, "GET", "/secrets/A?"+q, tok, nil, nil)
		if st != 400 {
			t.Errorf("%q: status %d (%s), want 400 BadParameter", q, st, body)
			continue
		}
		if !strings.Contains(string(body), "BadParameter") && q != "" && q != "apiversion=7.4" {
			t.Errorf("%q: body %s lacks BadParameter", q, body)
		}
		if h.Get("x-ms-request-id") == "" {
			t.Errorf("%q: refusal without x-ms-request-id", q)
		}
	}
	// The refusal must not echo arbitrary attacker text unescaped as JSON-breaking content.
	st, body, _ := raw(t, s, "GET", "/secrets/A?api-version="+url.QueryEscape(`x"}`), tok, nil, nil)
	if st != 400 || !jsonValid(body) {
		t.Errorf("quote in api-version: %d %s", st, body)
	}
	// Parameter-name case: ASP.NET (Key Vault) reads query keys case-insensitively.
	for _, q := range []string{"API-VERSION=7.4", "Api-Version=7.4"} {
		st, body, _ := raw(t, s, "GET", "/secrets/A?"+q, tok, nil, nil)
		t.Logf("%s -> %d %s", q, st, body)
	}
	// An unknown version with no token: what comes first?
	st, _, h := raw(t, s, "GET", "/secrets/A?api-version=1.0", "", nil, nil)
	t.Logf("unauthenticated bad version -> %d (www-authenticate %q)", st, h.Get("WWW-Authenticate"))
}

// Key Vault (ASP.NET) joins repeated query values ("7.4,1.0"), which is not
// a published version: refused. kvtest takes the first and ignores the rest,
// so a client bug that sends two versions passes locally.
func TestHostileAPIVersionDuplicateParam(t *testing.T) {
	s := kvtest.NewTestServer(t, nil)
	s.SetSecret("A", "va", nil)
	tok, _ := s.IssueToken()
	for _, q := range []string{"api-version=7.4&api-version=1.0", "api-version=1.0&api-version=7.4", "api-version=7.4&api-version=7.4"} {
		st, body, _ := raw(t, s, "GET", "/secrets/A?"+q, tok, nil, nil)
		if st != 400 {
			t.Errorf("%q: status %d (%.60s...), want 400 BadParameter", q, st, body)
		}
	}
}
