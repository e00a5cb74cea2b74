package kvtest

import (
	"net/url"
	"slices"
	"strings"
)

// LatestAPIVersion is the newest stable secrets api-version, the one
// azsecrets v1.5.1 sends and the one a refusal recommends.
const LatestAPIVersion = "2026-04-01"

// apiVersions are the secrets api-versions published in
// Azure/azure-rest-api-specs, specification/keyvault/data-plane: the
// swagger folders Microsoft.KeyVault/{stable,preview}/* (their
// info.version, e.g. "7.1-preview" for preview/7.1) up to 7.6, and the
// Versions enum of Secrets/main.tsp from 7.5 on.
var apiVersions = []string{
	"2015-06-01", "2016-10-01",
	"7.0-preview", "7.0",
	"7.1-preview", "7.1",
	"7.2-preview", "7.2",
	"7.3-preview", "7.3",
	"7.4-preview.1", "7.4",
	"7.5-preview.1", "7.5",
	"7.6-preview.1", "7.6-preview.2", "7.6",
	"2025-06-01-preview", "2025-07-01",
	"2026-01-01-preview", "2026-03-01-preview", LatestAPIVersion,
	"2026-05-01-preview", "2026-07-01-preview",
}

// APIVersions returns the api-versions the server accepts, oldest first:
// the published secrets api-versions, stable and preview. Any other
// version is refused as Key Vault refuses it: 400 BadParameter, "The
// specified version (V) is not recognized. Consider using the latest
// supported version (LatestAPIVersion)."
func APIVersions() []string { return slices.Clone(apiVersions) }

// checkAPIVersion returns Key Vault's answer to a request with api-version
// v, or nil if v is supported.
func checkAPIVersion(v string) *apiError {
	switch {
	case v == "":
		return badParameter("The api-version query parameter (?api-version=) is required for all requests.")
	case !slices.Contains(apiVersions, v):
		return badParameter("The specified version (" + v + ") is not recognized. Consider using the latest supported version (" + LatestAPIVersion + ").")
	}
	return nil
}

// apiVersionOf returns the request's api-version as ASP.NET, which Key
// Vault runs on, reads it: the query key in any case, and repeated values
// joined with commas ("7.4,1.0"), which no version matches.
func apiVersionOf(q url.Values) string {
	var vals []string
	for k, v := range q {
		if strings.EqualFold(k, "api-version") {
			vals = append(vals, v...)
		}
	}
	return strings.Join(vals, ",")
}
