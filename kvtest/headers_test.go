package kvtest

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// rawDo sends a request with an optional token and extra headers and
// returns status, body and headers.
func rawDo(t *testing.T, s *Server, method, path, token string, hdr http.Header) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL()+path, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// checkCommonHeaders checks the headers the real recordings show on every
// answer (see headers.go) and returns the request id.
func checkCommonHeaders(t *testing.T, what string, h http.Header, wantAddr string) string {
	t.Helper()
	want := map[string]string{
		"Cache-Control":                 "no-cache",
		"Pragma":                        "no-cache",
		"Expires":                       "-1",
		"Strict-Transport-Security":     "max-age=31536000;includeSubDomains",
		"X-Content-Type-Options":        "nosniff",
		"x-ms-keyvault-service-version": "1.9.2103.1",
		"x-ms-keyvault-region":          "westus",
		"x-ms-keyvault-network-info":    "conn_type=Ipv4;addr=" + wantAddr + ";act_addr_fam=InterNetwork;",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
	if _, err := http.ParseTime(h.Get("Date")); err != nil {
		t.Errorf("%s: Date %q: %v", what, h.Get("Date"), err)
	}
	id := h.Get("x-ms-request-id")
	if !uuidRE.MatchString(id) {
		t.Errorf("%s: x-ms-request-id %q is not a UUID", what, id)
	}
	return id
}

// TestResponseHeadersOnEveryAnswer checks every kind of answer — success,
// no content, the challenge, the vault's errors, api-version refusals,
// injected faults and the throttle — for Key Vault's headers, with a fresh
// request id each time, echoing x-ms-client-request-id when sent, and the
// role assignment header exactly on answers to authenticated requests
// that reached the vault.
func TestResponseHeadersOnEveryAnswer(t *testing.T) {
	s := NewTestServer(t, nil)
	s.Seed(map[string]string{"K": "v", "Gone": "x"})
	s.SetSecret("Off", "x", &SecretOptions{Disabled: true})
	s.DeleteSecret("Gone")
	tok, _ := s.IssueToken()
	const av = "?api-version=2026-04-01"

	type answer struct {
		name           string
		method, path   string
		token          string
		fault          *Fault
		status         int
		withAssignment bool
	}
	answers := []answer{
		{"challenge", "GET", "secrets/K/" + av, "", nil, 401, false},
		{"ok", "GET", "secrets/K/" + av, tok, nil, 200, true},
		{"list", "GET", "secrets" + av, tok, nil, 200, true},
		{"not found", "GET", "secrets/Nope/" + av, tok, nil, 404, true},
		{"disabled", "GET", "secrets/Off/" + av, tok, nil, 403, true},
		{"no api-version", "GET", "secrets/K/", tok, nil, 400, true},
		{"unknown api-version", "GET", "secrets/K/?api-version=1.0", tok, nil, 400, true},
		{"unknown path", "GET", "keys/K" + av, tok, nil, 400, true},
		{"purge", "DELETE", "deletedsecrets/Gone" + av, tok, nil, 204, true},
		{"fault", "GET", "secrets/K/" + av, tok, &ServiceUnavailable, 503, false},
		{"forbidden fault", "GET", "secrets/K/" + av, tok, &ForbiddenByRbac, 403, false},
	}
	seen := map[string]bool{}
	var ids []string
	for i, a := range answers {
		if a.fault != nil {
			s.FailNext(1, *a.fault)
		}
		var hdr http.Header
		if i%2 == 0 {
			hdr = http.Header{"X-Ms-Client-Request-Id": {"client-" + a.name}}
		}
		status, body, h := rawDo(t, s, a.method, a.path, a.token, hdr)
		if status != a.status {
			t.Fatalf("%s: status %d, want %d: %s", a.name, status, a.status, body)
		}
		id := checkCommonHeaders(t, a.name, h, "127.0.0.1")
		if seen[id] {
			t.Errorf("%s: request id %s repeated", a.name, id)
		}
		seen[id] = true
		ids = append(ids, id)
		if got, want := h.Get("x-ms-client-request-id"), hdr.Get("x-ms-client-request-id"); got != want {
			t.Errorf("%s: x-ms-client-request-id = %q, want %q", a.name, got, want)
		}
		if got := h.Get("x-ms-keyvault-rbac-assignment-id"); (got != "") != a.withAssignment ||
			got != "" && !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(got) {
			t.Errorf("%s: x-ms-keyvault-rbac-assignment-id = %q", a.name, got)
		}
	}

	// The throttle answers with the same headers.
	s.SetThrottle(1, time.Hour)
	rawDo(t, s, "GET", "secrets/K/"+av, tok, nil)
	status, _, h := rawDo(t, s, "GET", "secrets/K/"+av, tok, nil)
	if status != 429 {
		t.Fatalf("throttle: %d", status)
	}
	ids = append(ids, "", checkCommonHeaders(t, "throttled", h, "127.0.0.1"))

	// The request log names each answer's request id.
	log := s.RequestLog()
	if len(log) != len(ids) {
		t.Fatalf("log has %d entries, want %d", len(log), len(ids))
	}
	for i, e := range log {
		if ids[i] != "" && e.RequestID != ids[i] {
			t.Errorf("log[%d].RequestID = %q, want %q", i, e.RequestID, ids[i])
		}
	}
}

// TestResponseHeadersInProcess checks the in-process server, whose answers
// net/http does not date and whose requests have no address.
func TestResponseHeadersInProcess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _ := NewInProcess(nil)
		s.Seed(map[string]string{"K": "v"})
		tok, _ := s.IssueToken()
		a := checkCommonHeaders(t, "challenge", headersOf(t, s, ""), "127.0.0.1")
		b := checkCommonHeaders(t, "ok", headersOf(t, s, tok), "127.0.0.1")
		if a == b {
			t.Fatal("request id repeated")
		}
	})
}

func headersOf(t *testing.T, s *Server, tok string) http.Header {
	t.Helper()
	_, _, h := rawDo(t, s, "GET", "secrets/K/?api-version=2026-04-01", tok, nil)
	return h
}

func TestNetworkInfo(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:5000": "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;",
		"[::1]:5000":     "conn_type=Ipv6;addr=::1;act_addr_fam=InterNetworkV6;",
		"in-process":     "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;",
	} {
		if got := networkInfo(addr); got != want {
			t.Errorf("networkInfo(%q) = %q, want %q", addr, got, want)
		}
	}
}

// TestRequestIDInSDKError checks that an error from the real azsecrets
// client carries the request id, as one from Key Vault does, so that a
// failure can be matched with the server's log. azcore v1.23.3's
// ResponseError.Error() prints the request's method and URL, the status,
// the error code and the body, but no headers: the request id is read from
// RawResponse.Header.
func TestRequestIDInSDKError(t *testing.T) {
	s := NewTestServer(t, nil)
	c := newClient(t, s)
	_, err := c.GetSecret(context.Background(), "Missing", "", nil)
	re := responseError(t, err)
	if re.StatusCode != 404 || !strings.Contains(re.Error(), "SecretNotFound") {
		t.Fatalf("err = %v", err)
	}
	id := re.RawResponse.Header.Get("x-ms-request-id")
	if !uuidRE.MatchString(id) {
		t.Fatalf("x-ms-request-id = %q", id)
	}
	log := s.RequestLog()
	if last := log[len(log)-1]; last.RequestID != id || last.Status != 404 {
		t.Fatalf("last log entry %+v, want request id %s", last, id)
	}
	// The Go SDK sends no x-ms-client-request-id unless asked to (its
	// recordings show none); when one is sent, the vault echoes it.
	if got := re.RawResponse.Header.Get("x-ms-client-request-id"); got != "" {
		t.Fatalf("x-ms-client-request-id %q echoed, none sent", got)
	}
	ctx := policy.WithHTTPHeader(context.Background(), http.Header{"x-ms-client-request-id": {"my-request"}})
	_, err = c.GetSecret(ctx, "Missing", "", nil)
	re = responseError(t, err)
	if got := re.RawResponse.Header.Get("x-ms-client-request-id"); got != "my-request" {
		t.Fatalf("x-ms-client-request-id echoed %q, want my-request", got)
	}
	if re.RawResponse.Header.Get("x-ms-request-id") == id {
		t.Fatal("request id repeated")
	}
}
