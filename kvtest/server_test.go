package kvtest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newClient(t *testing.T, s *Server) *azsecrets.Client {
	t.Helper()
	c, err := azsecrets.NewClient(s.URL(), s.Credential(), s.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func responseError(t *testing.T, err error) *azcore.ResponseError {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("want *azcore.ResponseError, got %v", err)
	}
	return re
}

// TestGoSDKConformance runs the real azsecrets client through every
// secrets operation against the local vault.
func TestGoSDKConformance(t *testing.T) {
	s := NewTestServer(t, nil)
	c := newClient(t, s)
	ctx := context.Background()
	exp := time.Now().Add(180 * 24 * time.Hour).Truncate(time.Second).UTC()
	nbf := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()

	// set
	set, err := c.SetSecret(ctx, "MyApiKey", azsecrets.SetSecretParameters{
		Value: to.Ptr("v1"), ContentType: to.Ptr("text/plain"), Tags: map[string]*string{"team": to.Ptr("payments")},
		SecretAttributes: &azsecrets.SecretAttributes{Expires: &exp, NotBefore: &nbf},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v1 := set.ID.Version()
	if *set.Value != "v1" || set.ID.Name() != "MyApiKey" || len(v1) != 32 || !set.Attributes.Expires.Equal(exp) ||
		!set.Attributes.NotBefore.Equal(nbf) || !*set.Attributes.Enabled || *set.Tags["team"] != "payments" {
		t.Fatalf("SetSecret = %+v", set)
	}
	set2, err := c.SetSecret(ctx, "myapikey", azsecrets.SetSecretParameters{Value: to.Ptr("v2")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v2 := set2.ID.Version()

	// get latest and by version; names are case-insensitive
	got, err := c.GetSecret(ctx, "MYAPIKEY", "", nil)
	if err != nil || *got.Value != "v2" || got.ID.Version() != v2 || got.ID.Name() != "MyApiKey" {
		t.Fatalf("GetSecret latest = %+v, %v", got, err)
	}
	got, err = c.GetSecret(ctx, "MyApiKey", v1, nil)
	if err != nil || *got.Value != "v1" || *got.ContentType != "text/plain" {
		t.Fatalf("GetSecret v1 = %+v, %v", got, err)
	}
	_, err = c.GetSecret(ctx, "MyApiKey", "00000000000000000000000000000000", nil)
	if re := responseError(t, err); re.StatusCode != 404 || re.ErrorCode != "SecretNotFound" {
		t.Fatalf("unknown version: %v", err)
	}

	// list versions with paging (25 to a page)
	for i := range 30 {
		if _, err := c.SetSecret(ctx, "Paged", azsecrets.SetSecretParameters{Value: to.Ptr(strconv.Itoa(i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	pages, n := 0, 0
	for pager := c.NewListSecretPropertiesVersionsPager("Paged", nil); pager.More(); {
		pg, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		n += len(pg.Value)
		for _, p := range pg.Value {
			if p.ID.Name() != "Paged" || p.ID.Version() == "" {
				t.Fatalf("version item %+v", p)
			}
		}
	}
	if pages != 2 || n != 30 {
		t.Fatalf("versions: %d pages, %d items; want 2 and 30", pages, n)
	}
	names := map[string]bool{}
	for pager := c.NewListSecretPropertiesPager(nil); pager.More(); {
		pg, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pg.Value {
			names[p.ID.Name()] = true
		}
	}
	if len(names) != 2 || !names["MyApiKey"] || !names["Paged"] {
		t.Fatalf("list secrets = %v", names)
	}

	// update: disable the latest; a GET is then 403 SecretDisabled
	upd, err := c.UpdateSecretProperties(ctx, "MyApiKey", v2, azsecrets.UpdateSecretPropertiesParameters{
		SecretAttributes: &azsecrets.SecretAttributes{Enabled: to.Ptr(false)}, ContentType: to.Ptr("application/x-key"),
	}, nil)
	if err != nil || *upd.Attributes.Enabled || upd.Value != nil || *upd.ContentType != "application/x-key" {
		t.Fatalf("UpdateSecretProperties = %+v, %v", upd, err)
	}
	_, err = c.GetSecret(ctx, "MyApiKey", "", nil)
	re := responseError(t, err)
	body, _ := io.ReadAll(re.RawResponse.Body)
	if re.StatusCode != 403 || re.ErrorCode != "Forbidden" || !strings.Contains(string(body), `"innererror":{"code":"SecretDisabled"}`) {
		t.Fatalf("disabled: %v %s", err, body)
	}
	if got, err := c.GetSecret(ctx, "MyApiKey", v1, nil); err != nil || *got.Value != "v1" {
		t.Fatalf("an older enabled version: %v", err)
	}

	// backup, delete, deleted endpoints, recover, purge, restore
	bk, err := c.BackupSecret(ctx, "MyApiKey", nil)
	if err != nil || len(bk.Value) == 0 {
		t.Fatalf("BackupSecret: %v", err)
	}
	del, err := c.DeleteSecret(ctx, "MyApiKey", nil)
	if err != nil || del.RecoveryID == nil || del.DeletedDate == nil {
		t.Fatalf("DeleteSecret = %+v, %v", del, err)
	}
	_, err = c.GetSecret(ctx, "MyApiKey", "", nil)
	if re := responseError(t, err); re.StatusCode != 404 || re.ErrorCode != "SecretNotFound" {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := c.SetSecret(ctx, "MyApiKey", azsecrets.SetSecretParameters{Value: to.Ptr("x")}, nil); responseError(t, err).StatusCode != 409 {
		t.Fatalf("set while deleted: %v", err)
	}
	if d, err := c.GetDeletedSecret(ctx, "MyApiKey", nil); err != nil || d.ID.Name() != "MyApiKey" {
		t.Fatalf("GetDeletedSecret: %v", err)
	}
	deleted := 0
	for pager := c.NewListDeletedSecretPropertiesPager(nil); pager.More(); {
		pg, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		deleted += len(pg.Value)
	}
	if deleted != 1 {
		t.Fatalf("deleted secrets listed = %d", deleted)
	}
	if _, err := c.RecoverDeletedSecret(ctx, "MyApiKey", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetSecret(ctx, "MyApiKey", v1, nil); err != nil || *got.Value != "v1" {
		t.Fatalf("after recover: %v", err)
	}
	if _, err := c.DeleteSecret(ctx, "MyApiKey", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PurgeDeletedSecret(ctx, "MyApiKey", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetDeletedSecret(ctx, "MyApiKey", nil); responseError(t, err).StatusCode != 404 {
		t.Fatalf("after purge: %v", err)
	}
	if _, err := c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: bk.Value}, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetSecret(ctx, "MyApiKey", v1, nil); err != nil || *got.Value != "v1" {
		t.Fatalf("after restore: %v", err)
	}
	if _, err := c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: bk.Value}, nil); responseError(t, err).StatusCode != 409 {
		t.Fatalf("restore over an existing secret: %v", err)
	}

	// invalid names are refused by the service too
	_, err = c.GetSecret(ctx, "bad_name", "", nil)
	if re := responseError(t, err); re.StatusCode != 400 || re.ErrorCode != "BadParameter" {
		t.Fatalf("invalid name: %v", err)
	}
}

// rawGet sends a GET with an optional token and returns status, body and headers.
func rawGet(t *testing.T, s *Server, path, token string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.URL()+path, nil)
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

func TestChallengeAndTokens(t *testing.T) {
	s := NewTestServer(t, &Options{TenantID: "tenant-1"})
	s.Seed(map[string]string{"K": "v"})
	status, body, h := rawGet(t, s, "secrets/K/?api-version=2025-07-01", "")
	if status != 401 || !strings.Contains(body, `"code":"Unauthorized"`) ||
		h.Get("WWW-Authenticate") != `Bearer authorization="https://login.microsoftonline.com/tenant-1", resource="https://vault.azure.net"` {
		t.Fatalf("challenge: %d %s %v", status, body, h)
	}
	if status, _, _ := rawGet(t, s, "secrets/K/?api-version=2025-07-01", "forged"); status != 401 {
		t.Fatalf("forged token: %d", status)
	}
	tok, _ := s.IssueToken()
	if status, body, _ := rawGet(t, s, "secrets/K/?api%2Dversion=2025-07-01", tok); status != 200 || !strings.Contains(body, `"value":"v"`) {
		t.Fatalf("encoded api-version: %d %s", status, body)
	}
	if status, body, _ := rawGet(t, s, "secrets/K/", tok); status != 400 || !strings.Contains(body, "api-version") {
		t.Fatalf("no api-version: %d %s", status, body)
	}
	synctest.Test(t, func(t *testing.T) {
		short, _ := NewInProcess(&Options{TokenLifetime: time.Minute})
		short.Seed(map[string]string{"K": "v"})
		tok, _ := short.IssueToken()
		if status, _, _ := rawGet(t, short, "secrets/K/?api-version=2026-04-01", tok); status != 200 {
			t.Fatalf("fresh token: %d", status)
		}
		time.Sleep(time.Minute)
		if status, _, _ := rawGet(t, short, "secrets/K/?api-version=2026-04-01", tok); status != 401 {
			t.Fatalf("expired token: %d", status)
		}
	})
	if _, err := s.Credential().GetToken(context.Background(), policyScopes("https://storage.azure.com/.default")); err == nil {
		t.Fatal("credential issued a token for another scope")
	}
	if c := s.Counts(); c.Unauthenticated != 2 || c.Total != 4 {
		t.Fatalf("counts = %+v", c)
	}
}

func TestFaultsAndSDKRetries(t *testing.T) {
	s := NewTestServer(t, nil)
	s.Seed(map[string]string{"K": "v"})
	c := newClient(t, s)
	ctx := context.Background()

	// 503s and dropped connections are retried by the SDK (4 tries).
	s.FailNext(2, ServiceUnavailable)
	s.FailNext(1, DropConnection)
	if got, err := c.GetSecret(ctx, "K", "", nil); err != nil || *got.Value != "v" {
		t.Fatalf("after 3 transient faults: %v", err)
	}
	if n := s.SecretRequests("K"); n != 4 {
		t.Fatalf("GETs of K = %d, want 4", n)
	}
	// A 429 whose Retry-After exceeds the SDK's MaxRetryDelay is not retried.
	throttled := Throttled
	throttled.RetryAfter = "3600"
	s.FailNext(1, throttled)
	_, err := c.GetSecret(ctx, "K", "", nil)
	re := responseError(t, err)
	if re.StatusCode != 429 || re.ErrorCode != "Throttled" || re.RawResponse.Header.Get("Retry-After") != "3600" {
		t.Fatalf("throttled: %v", err)
	}
	// A role revoked for one secret.
	s.Seed(map[string]string{"Other": "o"})
	s.FailSecret("k", ForbiddenByRbac)
	_, err = c.GetSecret(ctx, "K", "", nil)
	re = responseError(t, err)
	body, _ := io.ReadAll(re.RawResponse.Body)
	if re.StatusCode != 403 || !strings.Contains(string(body), "ForbiddenByRbac") {
		t.Fatalf("FailSecret: %v", err)
	}
	if _, err := c.GetSecret(ctx, "Other", "", nil); err != nil {
		t.Fatalf("another secret: %v", err)
	}
	// A window of failures.
	s.ClearFaults()
	s.FailFor(time.Hour, InternalServerError)
	if _, err := c.GetSecret(ctx, "K", "", nil); responseError(t, err).StatusCode != 500 {
		t.Fatalf("FailFor: %v", err)
	}
	s.ClearFaults()
	// Latency.
	s.SetLatency(50 * time.Millisecond)
	start := time.Now()
	if _, err := c.GetSecret(ctx, "K", "", nil); err != nil || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("latency: %v after %v", err, time.Since(start))
	}
	s.SetLatency(0)
	// The request log.
	log := s.RequestLog()
	last := log[len(log)-1]
	if last.Op != "get" || last.Secret != "K" || last.Status != 200 || !last.Authorized {
		t.Fatalf("last request = %+v", last)
	}
	s.ResetCounts()
	if s.Counts().Total != 0 || len(s.RequestLog()) != 0 {
		t.Fatal("ResetCounts")
	}
}

func TestThrottleModel(t *testing.T) {
	s := NewTestServer(t, nil)
	s.Seed(map[string]string{"K": "v"})
	tok, _ := s.IssueToken()
	s.SetThrottle(10, time.Hour)
	ok, throttled := 0, 0
	for range 15 {
		status, body, h := rawGet(t, s, "secrets/K/?api-version=2025-07-01", tok)
		switch status {
		case 200:
			ok++
		case 429:
			throttled++
			if !strings.Contains(body, `"code":"Throttled"`) || h.Get("Retry-After") != "" {
				t.Fatalf("429 = %s %v", body, h)
			}
		}
	}
	if ok != 10 || throttled != 5 || s.Counts().Throttled != 5 {
		t.Fatalf("ok %d, throttled %d, counts %+v", ok, throttled, s.Counts())
	}
	synctest.Test(t, func(t *testing.T) {
		s, _ := NewInProcess(nil)
		s.Seed(map[string]string{"K": "v"})
		tok, _ := s.IssueToken()
		s.SetThrottle(1, 10*time.Second)
		if status, _, _ := rawGet(t, s, "secrets/K/?api-version=2026-04-01", tok); status != 200 {
			t.Fatalf("first: %d", status)
		}
		time.Sleep(9 * time.Second)
		if status, _, _ := rawGet(t, s, "secrets/K/?api-version=2026-04-01", tok); status != 429 {
			t.Fatalf("same window: %d", status)
		}
		time.Sleep(time.Second)
		if status, _, _ := rawGet(t, s, "secrets/K/?api-version=2026-04-01", tok); status != 200 {
			t.Fatalf("new window: %d", status)
		}
	})
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{{Addr: "0.0.0.0:0"}, {Addr: "10.0.0.1:0"}, {VaultName: "x"}, {VaultName: "bad_name"}, {Addr: "nonsense"}} {
		if s, err := NewServer(&o); err == nil {
			s.Close()
			t.Errorf("NewServer(%+v) accepted", o)
		}
	}
}

func policyScopes(scope string) policy.TokenRequestOptions {
	return policy.TokenRequestOptions{Scopes: []string{scope}}
}

// TestInProcessUnderSynctest runs the real SDK against an in-process vault
// on a fake clock: latency, the SDK's retry delays and the throttle's
// window all pass in no real time.
func TestInProcessUnderSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if s.Addr() != "" || s.LoopbackURL() != "" {
			t.Fatal("an in-process server has an address")
		}
		s.Seed(map[string]string{"K": "v"})
		c := newClient(t, s)
		ctx := context.Background()
		s.SetLatency(time.Second)
		start := time.Now()
		if got, err := c.GetSecret(ctx, "K", "", nil); err != nil || *got.Value != "v" {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 2*time.Second {
			t.Fatalf("took %v of fake time, want 2s (the challenge and the read)", d)
		}
		s.SetLatency(0)
		s.FailNext(1, DropConnection)
		s.FailNext(1, ServiceUnavailable)
		if _, err := c.GetSecret(ctx, "K", "", nil); err != nil {
			t.Fatalf("after a drop and a 503: %v", err)
		}
		s.SetThrottle(2, 10*time.Second)
		s.ResetCounts()
		for range 3 {
			c.GetSecret(ctx, "K", "", nil)
		}
		if s.Counts().Throttled == 0 {
			t.Fatal("no throttling")
		}
		time.Sleep(10 * time.Second)
		if _, err := c.GetSecret(ctx, "K", "", nil); err != nil {
			t.Fatalf("a new window: %v", err)
		}
		log := s.RequestLog()
		if log[0].Status != http.StatusTooManyRequests && log[len(log)-1].Status != 200 {
			t.Fatalf("log = %+v", log)
		}
	})
}

// TestVersionsAreListedInVersionIDOrder: as Key Vault does (the real
// recording TestListSecretVersions.json lists three versions created in one
// second in version-id order), the versions list is in no chronological
// order, and it is paged (25 a page unless maxresults says less).
func TestVersionsAreListedInVersionIDOrder(t *testing.T) {
	srv := NewTestServer(t, nil)
	var written []string
	for i := range 30 {
		v, err := srv.SetSecret("K", "v"+strconv.Itoa(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		written = append(written, v)
	}
	c := newClient(t, srv)
	var listed []string
	pages := 0
	for pager := c.NewListSecretPropertiesVersionsPager("K", nil); pager.More(); {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, p := range page.Value {
			listed = append(listed, p.ID.Version())
		}
	}
	sorted := slices.Clone(written)
	slices.Sort(sorted)
	if !slices.Equal(listed, sorted) || pages != 2 {
		t.Fatalf("listed %d versions in %d pages, in version-id order: %v", len(listed), pages, slices.Equal(listed, sorted))
	}
	if slices.Equal(sorted, written) {
		t.Fatal("version ids were made in chronological order: the test proves nothing")
	}
}
