package kvtest

import (
	"crypto/cipher"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The vault's data and its REST operations, as Key Vault answers them
// (https://learn.microsoft.com/rest/api/keyvault/secrets). Everything here
// runs with Server.mu held.

const (
	maxValueBytes       = 25 * 1024
	maxContentTypeBytes = 255
	recoveryLevel       = "Recoverable+Purgeable"
	recoverableDays     = 90
	defaultPageSize     = 25
)

type vault struct {
	active  map[string]*secret // by lower-case name
	deleted map[string]*secret
	backups cipher.AEAD // seals backup blobs under the server's own key (backup.go)
}

func (v *vault) init() {
	v.active = map[string]*secret{}
	v.deleted = map[string]*secret{}
	v.backups = newBackupAEAD()
}

type secret struct {
	name               string // as first set
	versions           []*version
	deletedDate        int64
	scheduledPurgeDate int64
}

func (s *secret) latest() *version { return s.versions[len(s.versions)-1] }

func (s *secret) find(id string) *version {
	for _, v := range s.versions {
		if strings.EqualFold(v.id, id) {
			return v
		}
	}
	return nil
}

type version struct {
	id          string
	value       string
	contentType string
	tags        map[string]string
	enabled     bool
	nbf, exp    *int64
	created     int64
	updated     int64

	// Event Grid: whether the expiry events of this version were published.
	nearSent, expiredSent bool
}

// Wire shapes, with fields in the order Key Vault sends them.
type attributesJSON struct {
	Enabled         bool   `json:"enabled"`
	NBF             *int64 `json:"nbf,omitempty"`
	EXP             *int64 `json:"exp,omitempty"`
	Created         int64  `json:"created"`
	Updated         int64  `json:"updated"`
	RecoveryLevel   string `json:"recoveryLevel"`
	RecoverableDays int    `json:"recoverableDays"`
}

type bundleJSON struct {
	Value       *string           `json:"value,omitempty"`
	ContentType string            `json:"contentType,omitempty"`
	ID          string            `json:"id"`
	Attributes  attributesJSON    `json:"attributes"`
	Tags        map[string]string `json:"tags,omitempty"`
}

type deletedJSON struct {
	RecoveryID         string `json:"recoveryId"`
	DeletedDate        int64  `json:"deletedDate"`
	ScheduledPurgeDate int64  `json:"scheduledPurgeDate"`
	bundleJSON
}

type pageJSON struct {
	Value    []any   `json:"value"`
	NextLink *string `json:"nextLink"`
}

type setRequest struct {
	Value       *string           `json:"value"`
	ContentType *string           `json:"contentType"`
	Tags        map[string]string `json:"tags"`
	Attributes  *struct {
		Enabled *bool  `json:"enabled"`
		NBF     *int64 `json:"nbf"`
		EXP     *int64 `json:"exp"`
	} `json:"attributes"`
}

// apiError is an answer with Key Vault's error body.
type apiError struct {
	status       int
	code, inner  string
	message      string
	extraHeaders http.Header
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func (e *apiError) body() []byte {
	inner := map[string]any{"code": e.code, "message": e.message}
	if e.inner != "" {
		inner["innererror"] = map[string]any{"code": e.inner}
	}
	b, _ := json.Marshal(map[string]any{"error": inner})
	return b
}

func badParameter(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "BadParameter", message: msg}
}

func secretNotFound(name string) *apiError {
	return &apiError{status: http.StatusNotFound, code: "SecretNotFound",
		message: "A secret with (name/id) " + name + " was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"}
}

func deletedNotFound(name string) *apiError {
	return &apiError{status: http.StatusNotFound, code: "SecretNotFound", message: "Deleted Secret not found: " + name}
}

func disabled() *apiError {
	return &apiError{status: http.StatusForbidden, code: "Forbidden", inner: "SecretDisabled",
		message: "Operation get is not allowed on a disabled secret."}
}

// validName reports whether name is a valid Key Vault object name.
func validName(name string) bool {
	if len(name) < 1 || len(name) > 127 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

func newVersionID() string {
	var b [16]byte
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return hex.EncodeToString(b[:])
}

func (v *vault) set(name string, req setRequest, now time.Time) (*secret, *version, *apiError) {
	if !validName(name) {
		return nil, nil, badParameter("The request URI contains an invalid name: " + name)
	}
	if req.Value == nil {
		return nil, nil, badParameter("Property 'value' is required.")
	}
	if len(*req.Value) > maxValueBytes {
		return nil, nil, badParameter("Secret value exceeds the maximum size of 25 KB.")
	}
	if req.ContentType != nil && len(*req.ContentType) > maxContentTypeBytes {
		return nil, nil, badParameter("Content type exceeds the maximum length of 255 characters.")
	}
	key := strings.ToLower(name)
	if _, gone := v.deleted[key]; gone {
		return nil, nil, &apiError{status: http.StatusConflict, code: "Conflict",
			message: "Secret " + name + " is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."}
	}
	s := v.active[key]
	if s == nil {
		s = &secret{name: name}
		v.active[key] = s
	}
	ts := now.Unix()
	ver := &version{id: newVersionID(), value: *req.Value, enabled: true, created: ts, updated: ts, tags: req.Tags}
	if req.ContentType != nil {
		ver.contentType = *req.ContentType
	}
	if a := req.Attributes; a != nil {
		if a.Enabled != nil {
			ver.enabled = *a.Enabled
		}
		ver.nbf, ver.exp = a.NBF, a.EXP
	}
	s.versions = append(s.versions, ver)
	return s, ver, nil
}

func (v *vault) get(name, id string) (*secret, *version, *apiError) {
	s := v.active[strings.ToLower(name)]
	if s == nil {
		return nil, nil, secretNotFound(name)
	}
	if id == "" {
		return s, s.latest(), nil
	}
	ver := s.find(id)
	if ver == nil {
		return nil, nil, secretNotFound(name + "/" + id)
	}
	return s, ver, nil
}

func bundle(base string, s *secret, v *version, withValue bool) bundleJSON {
	b := bundleJSON{
		ContentType: v.contentType,
		ID:          base + "secrets/" + s.name + "/" + v.id,
		Tags:        v.tags,
		Attributes: attributesJSON{Enabled: v.enabled, NBF: v.nbf, EXP: v.exp, Created: v.created, Updated: v.updated,
			RecoveryLevel: recoveryLevel, RecoverableDays: recoverableDays},
	}
	if withValue {
		val := v.value
		b.Value = &val
	}
	return b
}

func deletedBundle(base string, s *secret, withVersion bool) deletedJSON {
	b := bundle(base, s, s.latest(), false)
	if !withVersion {
		b.ID = base + "secrets/" + s.name
	}
	return deletedJSON{RecoveryID: base + "deletedsecrets/" + s.name, DeletedDate: s.deletedDate,
		ScheduledPurgeDate: s.scheduledPurgeDate, bundleJSON: b}
}

// page returns items[skip:skip+max] and the next link, if any.
func page[T any](r *http.Request, base, path string, items []T) (pageJSON, *apiError) {
	q := r.URL.Query()
	max := defaultPageSize
	if m := q.Get("maxresults"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 1 || n > 25 {
			return pageJSON{}, badParameter("maxresults must be between 1 and 25.")
		}
		max = n
	}
	skip := 0
	if tok := q.Get("$skiptoken"); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		n, err2 := strconv.Atoi(string(raw))
		if err != nil || err2 != nil || n < 0 {
			return pageJSON{}, badParameter("Invalid skip token.")
		}
		skip = n
	}
	out := pageJSON{Value: []any{}}
	for i := skip; i < len(items) && i < skip+max; i++ {
		out.Value = append(out.Value, items[i])
	}
	if skip+max < len(items) {
		next := url.Values{}
		next.Set("api-version", apiVersionOf(q))
		next.Set("$skiptoken", base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(skip+max))))
		next.Set("maxresults", strconv.Itoa(max))
		link := base + path + "?" + next.Encode()
		out.NextLink = &link
	}
	return out, nil
}

func sortedSecrets(m map[string]*secret) []*secret {
	out := make([]*secret, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return strings.ToLower(out[i].name) < strings.ToLower(out[j].name) })
	return out
}

// route is the parsed request path.
type route struct {
	op            string // get, set, update, delete, list, versions, backup, restore, getDeleted, purge, recover, listDeleted
	name, version string
}

func parseRoute(method, path string) (route, bool) {
	p := strings.Split(strings.TrimPrefix(path, "/"), "/")
	switch {
	case len(p) == 1 && p[0] == "secrets" && method == http.MethodGet:
		return route{op: "list"}, true
	case len(p) == 2 && p[0] == "secrets" && p[1] == "restore" && method == http.MethodPost:
		return route{op: "restore"}, true
	case len(p) == 2 && p[0] == "secrets":
		switch method {
		case http.MethodGet:
			return route{op: "get", name: p[1]}, true
		case http.MethodPut:
			return route{op: "set", name: p[1]}, true
		case http.MethodDelete:
			return route{op: "delete", name: p[1]}, true
		}
	case len(p) == 3 && p[0] == "secrets":
		switch {
		case p[2] == "" && method == http.MethodGet:
			return route{op: "get", name: p[1]}, true
		case p[2] == "versions" && method == http.MethodGet:
			return route{op: "versions", name: p[1]}, true
		case p[2] == "backup" && method == http.MethodPost:
			return route{op: "backup", name: p[1]}, true
		case method == http.MethodGet:
			return route{op: "get", name: p[1], version: p[2]}, true
		case method == http.MethodPatch:
			return route{op: "update", name: p[1], version: p[2]}, true
		}
	case len(p) == 1 && p[0] == "deletedsecrets" && method == http.MethodGet:
		return route{op: "listDeleted"}, true
	case len(p) == 2 && p[0] == "deletedsecrets":
		switch method {
		case http.MethodGet:
			return route{op: "getDeleted", name: p[1]}, true
		case http.MethodDelete:
			return route{op: "purge", name: p[1]}, true
		}
	case len(p) == 3 && p[0] == "deletedsecrets" && p[2] == "recover" && method == http.MethodPost:
		return route{op: "recover", name: p[1]}, true
	}
	return route{}, false
}

// do performs an authorised request's operation and returns the status and
// body. The caller holds s.mu.
func (s *Server) do(r *http.Request, rt route, body []byte) (int, any, *apiError) {
	base := "https://" + r.Host + "/"
	now := time.Now()
	v := &s.vault
	if rt.name != "" && !validName(rt.name) {
		return 0, nil, badParameter("The request URI contains an invalid name: " + rt.name)
	}
	switch rt.op {
	case "get":
		sec, ver, err := v.get(rt.name, rt.version)
		if err != nil {
			return 0, nil, err
		}
		if !ver.enabled {
			return 0, nil, disabled()
		}
		return http.StatusOK, bundle(base, sec, ver, true), nil

	case "set":
		var req setRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return 0, nil, badParameter("The request body is not valid JSON.")
		}
		sec, ver, err := v.set(rt.name, req, now)
		if err != nil {
			return 0, nil, err
		}
		s.newVersionLocked(sec, ver)
		return http.StatusOK, bundle(base, sec, ver, true), nil

	case "update":
		sec, ver, err := v.get(rt.name, rt.version)
		if err != nil {
			return 0, nil, err
		}
		var req setRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return 0, nil, badParameter("The request body is not valid JSON.")
		}
		if req.Value != nil {
			return 0, nil, badParameter("A secret's value cannot be updated; set a new version.")
		}
		if req.ContentType != nil {
			ver.contentType = *req.ContentType
		}
		if req.Tags != nil {
			ver.tags = req.Tags
		}
		if a := req.Attributes; a != nil {
			if a.Enabled != nil {
				ver.enabled = *a.Enabled
			}
			if a.NBF != nil {
				ver.nbf = a.NBF
			}
			if a.EXP != nil && (ver.exp == nil || *ver.exp != *a.EXP) {
				ver.exp = a.EXP
				ver.nearSent, ver.expiredSent = false, false
				s.pokeExpiryLocked()
			}
		}
		ver.updated = now.Unix()
		return http.StatusOK, bundle(base, sec, ver, false), nil

	case "delete":
		key := strings.ToLower(rt.name)
		sec := v.active[key]
		if sec == nil {
			return 0, nil, secretNotFound(rt.name)
		}
		delete(v.active, key)
		sec.deletedDate = now.Unix()
		sec.scheduledPurgeDate = now.Add(recoverableDays * 24 * time.Hour).Unix()
		v.deleted[key] = sec
		return http.StatusOK, deletedBundle(base, sec, true), nil

	case "list":
		var items []bundleJSON
		for _, sec := range sortedSecrets(v.active) {
			b := bundle(base, sec, sec.latest(), false)
			b.ID = base + "secrets/" + sec.name
			items = append(items, b)
		}
		pg, err := page(r, base, "secrets", items)
		return http.StatusOK, pg, err

	case "versions":
		sec := v.active[strings.ToLower(rt.name)]
		if sec == nil {
			return 0, nil, secretNotFound(rt.name)
		}
		// Key Vault lists versions in no chronological order: the real
		// recording TestListSecretVersions.json (azsecrets v0.12.0's
		// testdata) lists them in version-id order, three created in one
		// second. Clients must not take the order for age.
		vers := slices.Clone(sec.versions)
		slices.SortFunc(vers, func(a, b *version) int { return strings.Compare(a.id, b.id) })
		var items []bundleJSON
		for _, ver := range vers {
			items = append(items, bundle(base, sec, ver, false))
		}
		pg, err := page(r, base, "secrets/"+sec.name+"/versions", items)
		return http.StatusOK, pg, err

	case "backup":
		sec := v.active[strings.ToLower(rt.name)]
		if sec == nil {
			return 0, nil, secretNotFound(rt.name)
		}
		return http.StatusOK, map[string]string{"value": v.backup(sec)}, nil

	case "restore":
		var req struct {
			Value string `json:"value"`
		}
		if err := json.Unmarshal(body, &req); err != nil || req.Value == "" {
			return 0, nil, badParameter("Property 'value' is required.")
		}
		sec, err := v.restore(req.Value)
		if err != nil {
			return 0, nil, err
		}
		s.pokeExpiryLocked()
		return http.StatusOK, bundle(base, sec, sec.latest(), false), nil

	case "getDeleted":
		sec := v.deleted[strings.ToLower(rt.name)]
		if sec == nil {
			return 0, nil, deletedNotFound(rt.name)
		}
		return http.StatusOK, deletedBundle(base, sec, true), nil

	case "purge":
		key := strings.ToLower(rt.name)
		if v.deleted[key] == nil {
			return 0, nil, deletedNotFound(rt.name)
		}
		delete(v.deleted, key)
		return http.StatusNoContent, nil, nil

	case "recover":
		key := strings.ToLower(rt.name)
		sec := v.deleted[key]
		if sec == nil {
			return 0, nil, deletedNotFound(rt.name)
		}
		delete(v.deleted, key)
		sec.deletedDate, sec.scheduledPurgeDate = 0, 0
		v.active[key] = sec
		s.pokeExpiryLocked()
		return http.StatusOK, bundle(base, sec, sec.latest(), false), nil

	case "listDeleted":
		var items []deletedJSON
		for _, sec := range sortedSecrets(v.deleted) {
			items = append(items, deletedBundle(base, sec, false))
		}
		pg, err := page(r, base, "deletedsecrets", items)
		return http.StatusOK, pg, err
	}
	return 0, nil, badParameter("Unsupported operation.")
}

// ServeHTTP answers one request: challenge, faults, then the operation.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w}
	rt, known := parseRoute(r.Method, r.URL.Path)
	authorised := s.authorised(r)
	// Every answer carries Key Vault's headers (headers.go), the challenge
	// and injected faults too.
	requestID := setResponseHeaders(w.Header(), r)
	logged := false
	defer func() {
		if logged {
			return
		}
		id := requestID
		if rec.status < 0 {
			id = "" // dropped: the client saw no answer
		}
		s.logRequest(r, rt, authorised, rec.status, id)
	}()

	// Latency is the network's: every request pays it, the challenge too.
	if d := s.latency(); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	// Key Vault challenges before anything else, reading no body.
	if !authorised {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="https://login.microsoftonline.com/%s", resource="https://vault.azure.net"`, s.tenant.id))
		writeError(rec, &apiError{status: http.StatusUnauthorized, code: "Unauthorized",
			message: "AKV10000: Request is missing a Bearer or PoP token."})
		return
	}
	if f, ok := s.nextFault(rt.name); ok {
		if f.Drop || f.ResetMidBody {
			// Counted before the connection closes: the client, seeing
			// it close, may retry and read the counts before this
			// handler's deferred work has run.
			logged = true
			s.logRequest(r, rt, authorised, -1, "")
		}
		if !s.applyFault(rec, r, f) {
			rec.status = -1 // dropped
		}
		return
	}
	// Answers to authenticated requests name the role assignment that
	// let them through; the challenge and injected faults do not.
	w.Header().Set("x-ms-keyvault-rbac-assignment-id", s.assignmentID)
	if err := checkAPIVersion(apiVersionOf(r.URL.Query())); err != nil {
		writeError(rec, err)
		return
	}
	if !known {
		writeError(rec, &apiError{status: http.StatusBadRequest, code: "BadParameter",
			message: "The request URI " + r.URL.Path + " is not supported."})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(rec, badParameter("The request body could not be read."))
		return
	}
	s.mu.Lock()
	status, out, apiErr := s.do(r, rt, body)
	s.mu.Unlock()
	if apiErr != nil {
		writeError(rec, apiErr)
		return
	}
	if out == nil {
		rec.WriteHeader(status)
		return
	}
	b, _ := json.Marshal(out)
	rec.Header().Set("Content-Type", "application/json; charset=utf-8")
	rec.WriteHeader(status)
	rec.Write(b)
}

func writeError(w http.ResponseWriter, e *apiError) {
	for k, v := range e.extraHeaders {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(e.status)
	w.Write(e.body())
}

type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

var errUnknownSecret = errors.New("kvtest: no such secret")
