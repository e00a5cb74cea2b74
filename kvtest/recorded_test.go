package kvtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kvsecrets/kvsecrets/internal/recordings"
)

// TestRecordedTrafficConformance makes every operation of every real
// recording against the local vault, in order, and checks that each
// recorded GET gets the same status, error code, inner code and JSON field
// structure.
//
// Two things a real vault does asynchronously are folded: a GET repeated
// at once is the SDK polling a delete or recovery until it completes, so
// only the last of a run of identical GETs is compared (the local vault
// completes at once); and list pages are followed through the local vault's
// own nextLinks, so a recorded page beyond its last is not compared. Other
// methods are replayed for their effect; a different status is only logged,
// since the real vault's purge also completes later (its first restore
// answers 409).
func TestRecordedTrafficConformance(t *testing.T) {
	paths, err := recordings.All()
	if err != nil {
		t.Fatal(err)
	}
	compared := 0
	for _, path := range paths {
		rec, err := recordings.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			compared += replayAgainstLocal(t, rec)
		})
	}
	if compared < 18 {
		t.Fatalf("only %d recorded GETs compared", compared)
	}
}

func replayAgainstLocal(t *testing.T, rec *recordings.Recording) int {
	s := NewTestServer(t, nil)
	client := s.HTTPClient()
	token, _ := s.IssueToken()
	nextLinks := map[string]string{} // path → our last nextLink
	// The local vault makes its own version ids and backup blobs: recorded
	// ones are mapped to local ones as they appear, and replaced in later
	// requests.
	ids := map[string]string{}
	compared := 0
	for i, e := range rec.Entries {
		u, err := url.Parse(e.RequestURI)
		if err != nil {
			t.Fatal(err)
		}
		clientID := e.RequestHeaders["x-ms-client-request-id"]
		if e.StatusCode == http.StatusUnauthorized {
			// The challenge; TestChallengeAndTokens covers its body. Its
			// headers are compared here.
			req, _ := http.NewRequest(e.RequestMethod, s.URL()+strings.TrimPrefix(u.Path, "/")+"?"+u.RawQuery, nil)
			if clientID != "" {
				req.Header.Set("x-ms-client-request-id", clientID)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != e.StatusCode {
				t.Errorf("%s %s without a token: status %d", e.RequestMethod, u.Path, resp.StatusCode)
			}
			compareHeaderNames(t, e, resp.Header)
			continue
		}
		isGet := e.RequestMethod == http.MethodGet
		if isGet && i+1 < len(rec.Entries) && rec.Entries[i+1].RequestMethod == e.RequestMethod &&
			rec.Entries[i+1].RequestURI == e.RequestURI {
			continue // a poll; compare the last of the run
		}
		segs := strings.Split(u.Path, "/")
		for j, seg := range segs {
			if local, ok := ids[seg]; ok {
				segs[j] = local
			}
		}
		target := s.URL() + strings.TrimPrefix(strings.Join(segs, "/"), "/") + "?" + u.RawQuery
		if u.Query().Get("$skiptoken") != "" {
			next, ok := nextLinks[strings.ToLower(u.Path)]
			if !ok {
				continue // the local vault had no further page
			}
			target = next
		}
		var body io.Reader
		if len(e.RequestBody) > 0 && string(e.RequestBody) != "null" {
			b := string(e.RequestBody)
			for recorded, local := range ids {
				b = strings.ReplaceAll(b, recorded, local)
			}
			body = strings.NewReader(b)
		}
		req, _ := http.NewRequest(e.RequestMethod, target, body)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		if clientID != "" {
			req.Header.Set("x-ms-client-request-id", clientID)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var gotDoc, recDoc map[string]any
		json.Unmarshal(got, &gotDoc)
		json.Unmarshal(e.ResponseBody, &recDoc)
		mapIDs(ids, recDoc, gotDoc)
		if link, ok := gotDoc["nextLink"].(string); ok {
			nextLinks[strings.ToLower(u.Path)] = link
		} else {
			delete(nextLinks, strings.ToLower(u.Path))
		}
		if resp.StatusCode == e.StatusCode {
			compareHeaderNames(t, e, resp.Header)
		}
		if !isGet {
			if resp.StatusCode != e.StatusCode {
				t.Logf("%s %s: status %d, recorded %d: %s", e.RequestMethod, u.Path, resp.StatusCode, e.StatusCode, got)
			}
			continue
		}
		compared++
		var wantDoc any = recDoc
		what := e.RequestMethod + " " + u.Path
		if resp.StatusCode != e.StatusCode {
			t.Errorf("%s: status %d, recorded %d (%s)", what, resp.StatusCode, e.StatusCode, got)
			continue
		}
		if w, g := errorCodes(wantDoc), errorCodes(gotDoc); w != g {
			t.Errorf("%s: error codes %q, recorded %q", what, g, w)
		}
		w, g := align(wantDoc, any(gotDoc))
		if w, g := shape(w), shape(g); w != g {
			t.Errorf("%s: JSON fields differ\n local:    %s\n recorded: %s", what, g, w)
		}
	}
	return compared
}

// compareHeaderNames checks that the local answer carries every header
// the recorded one does, but x-ms-keyvault-rbac-cache: a diagnostic of the
// 2023 recordings (role-assignment cache ages) that the 2025 ones no longer
// show.
func compareHeaderNames(t *testing.T, e recordings.Entry, got http.Header) {
	t.Helper()
	for k, v := range e.ResponseHeaders {
		if strings.EqualFold(k, "x-ms-keyvault-rbac-cache") {
			continue
		}
		if _, ok := got[http.CanonicalHeaderKey(k)]; !ok {
			t.Errorf("%s %s (%d): no %s header (recorded %q)", e.RequestMethod, e.RequestURI, e.StatusCode, k, v)
		}
	}
}

// mapIDs records the local version id and backup blob that answer the
// recorded ones.
func mapIDs(ids map[string]string, recorded, local map[string]any) {
	if recorded == nil || local == nil {
		return
	}
	if r, ok := recorded["id"].(string); ok {
		if l, ok := local["id"].(string); ok {
			rs, ls := strings.Split(r, "/"), strings.Split(l, "/")
			if len(rs) == 6 && len(ls) == 6 {
				ids[rs[5]] = ls[5]
			}
		}
	}
	if r, ok := recorded["value"].(string); ok && len(r) > 200 {
		if l, ok := local["value"].(string); ok {
			ids[r] = l // a backup blob
		}
	}
}

func errorCodes(doc any) string {
	m, _ := doc.(map[string]any)
	e, _ := m["error"].(map[string]any)
	if e == nil {
		return ""
	}
	code, _ := e["code"].(string)
	if inner, ok := e["innererror"].(map[string]any); ok {
		ic, _ := inner["code"].(string)
		code += "/" + ic
	}
	return code
}

// align empties an array on one side where the other side's is empty: a
// real vault may answer a list page with no items (TestListDeletedSecrets
// does), which says nothing of the items' fields.
func align(want, got any) (any, any) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return want, got
		}
		w2, g2 := map[string]any{}, map[string]any{}
		for k, v := range w {
			w2[k] = v
		}
		for k, v := range g {
			g2[k] = v
		}
		for k := range w {
			if _, ok := g[k]; ok {
				w2[k], g2[k] = align(w[k], g[k])
			}
		}
		return w2, g2
	case []any:
		g, ok := got.([]any)
		if ok && (len(w) == 0 || len(g) == 0) {
			return []any{}, []any{}
		}
		if ok {
			a, b := align(w[0], g[0])
			return []any{a}, []any{b}
		}
	}
	return want, got
}

// shape describes a JSON value's structure: object keys with the shapes of
// their values, the shape of an array's first element, scalar kinds. A
// nextLink is a link whether null (last page) or a string.
func shape(v any) string {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		b.WriteString("{")
		for _, k := range keys {
			b.WriteString(k + ":")
			switch {
			case k == "nextLink":
				b.WriteString("link")
			case k == "message":
				b.WriteString("text")
			default:
				b.WriteString(shape(x[k]))
			}
			b.WriteString(",")
		}
		b.WriteString("}")
		return b.String()
	case []any:
		if len(x) == 0 {
			return "[]"
		}
		return "[" + shape(x[0]) + "]"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	return "?"
}
