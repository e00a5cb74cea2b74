package kvtest

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// TestAPIVersions checks that the server accepts the published secrets
// api-versions and refuses any other as Key Vault does.
//
// The evidence for the refusal:
//   - Azure/azure-sdk-for-net issue #14789
//     (https://github.com/Azure/azure-sdk-for-net/issues/14789, "Key Vault
//     Live tests failing in US Gov Cloud", 2020-09-02) quotes the vault's
//     body: {"error":{"code":"BadParameter","message":"The specified version
//     (7.1) is not recognized. Consider using the latest supported version
//     (2016-10-01)."}}
//   - Azure/azure-sdk-for-python issue #28595
//     (https://github.com/Azure/azure-sdk-for-python/issues/28595, Azure
//     Stack Hub Key Vault, 2023-02-02): "(BadParameter) The specified
//     version (7.3) is not recognized. Consider using the latest supported
//     version (7.1)."
//
// Neither thread prints the status. Key Vault answers BadParameter with
// 400 ("Status: 400 (Bad Request) ErrorCode: BadParameter" in
// Azure/azure-sdk-for-net issue #32260), so 400 it is.
//
// The accepted versions are the specs' (Azure/azure-rest-api-specs,
// specification/keyvault/data-plane: the Microsoft.KeyVault swagger
// folders and Secrets/main.tsp's Versions enum). The clients this project
// runs send: azsecrets v1.5.1 "2026-04-01" (constants.go,
// version20260401); @azure/keyvault-secrets 4.10.0 "7.6"
// (LATEST_API_VERSION, conformance/); Debian's python3-azure
// (20230112+git-1) azure-keyvault-secrets "7.3"
// (_shared/client_base.py, DEFAULT_VERSION = ApiVersion.V7_3).
func TestAPIVersions(t *testing.T) {
	s := NewTestServer(t, nil)
	s.Seed(map[string]string{"K": "v"})
	tok, _ := s.IssueToken()

	for _, v := range []string{"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "7.6-preview.2", "2025-07-01", "2026-04-01"} {
		if !slices.Contains(APIVersions(), v) {
			t.Errorf("APIVersions() lacks %s", v)
		}
	}
	for _, v := range APIVersions() {
		if status, body, _ := rawGet(t, s, "secrets/K/?api-version="+v, tok); status != 200 {
			t.Errorf("api-version %s: %d %s", v, status, body)
		}
	}

	for _, v := range []string{"1.0", "1", "7.7", "7.6-preview.3", "2024-01-01", "latest", "7.4 "} {
		status, body, _ := rawGet(t, s, "secrets/K/?api-version="+url.QueryEscape(v), tok)
		want := `{"error":{"code":"BadParameter","message":"The specified version (` + v +
			`) is not recognized. Consider using the latest supported version (2026-04-01)."}}`
		if status != 400 || !jsonEqual(body, want) {
			t.Errorf("api-version %q: %d %s\nwant 400 %s", v, status, body, want)
		}
	}
	if status, body, _ := rawGet(t, s, "secrets/K/", tok); status != 400 ||
		!jsonEqual(body, `{"error":{"code":"BadParameter","message":"The api-version query parameter (?api-version=) is required for all requests."}}`) {
		t.Errorf("no api-version: %d %s", status, body)
	}
	// The challenge still comes first.
	if status, _, _ := rawGet(t, s, "secrets/K/?api-version=1.0", ""); status != 401 {
		t.Errorf("unknown api-version without a token: %d", status)
	}
}

// TestAPIVersionThroughSDK selects api-versions through the real client's
// ClientOptions.APIVersion.
func TestAPIVersionThroughSDK(t *testing.T) {
	s := NewTestServer(t, nil)
	ctx := context.Background()
	for _, v := range []string{"", "7.4", "7.6", "2025-07-01"} {
		o := s.ClientOptions()
		o.APIVersion = v
		c, _ := azsecrets.NewClient(s.URL(), s.Credential(), o)
		if _, err := c.SetSecret(ctx, "K", azsecrets.SetSecretParameters{Value: to.Ptr("v" + v)}, nil); err != nil {
			t.Fatalf("api-version %q: %v", v, err)
		}
	}
	o := s.ClientOptions()
	o.APIVersion = "1.0"
	c, _ := azsecrets.NewClient(s.URL(), s.Credential(), o)
	_, err := c.GetSecret(ctx, "K", "", nil)
	if re := responseError(t, err); re.StatusCode != 400 || re.ErrorCode != "BadParameter" {
		t.Fatalf("api-version 1.0: %v", err)
	}
}

func jsonEqual(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}
