package kvtest

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Fault is an answer the server gives instead of performing a request.
type Fault struct {
	Status     int    // HTTP status
	Code       string // error.code in the body
	InnerCode  string // error.innererror.code, if any
	Message    string // error.message
	RetryAfter string // value of a Retry-After header, if any
	Drop       bool   // close the connection without answering (Status and the rest are ignored)
	// ResetMidBody answers 200 with a Content-Length, sends half a body,
	// and closes the connection.
	ResetMidBody bool
}

// Faults as Key Vault sends them.
var (
	ServiceUnavailable = Fault{Status: http.StatusServiceUnavailable, Code: "ServiceUnavailable",
		Message: "The service is temporarily unavailable. Please retry later."}
	InternalServerError = Fault{Status: http.StatusInternalServerError, Code: "InternalServerError",
		Message: "An unexpected error occurred."}
	// Throttled is a 429 without Retry-After, as Key Vault has been seen
	// to send; set RetryAfter on a copy for the other kind.
	Throttled = Fault{Status: http.StatusTooManyRequests, Code: "Throttled",
		Message: "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"}
	ForbiddenByRbac = Fault{Status: http.StatusForbidden, Code: "Forbidden", InnerCode: "ForbiddenByRbac",
		Message: "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'"}
	AccessDenied = Fault{Status: http.StatusForbidden, Code: "Forbidden", InnerCode: "AccessDenied",
		Message: "The user, group or application does not have secrets get permission on key vault."}
	DropConnection = Fault{Drop: true}
	ResetMidBody   = Fault{ResetMidBody: true}
)

type faults struct {
	next      []Fault
	until     time.Time
	window    Fault
	perSecret map[string]Fault
	latency   time.Duration

	throttleLimit  int
	throttleWindow time.Duration
	throttleStart  time.Time
	throttleCount  int
	throttleFault  Fault
}

// FailNext answers the next n authorised requests with f.
func (s *Server) FailNext(n int, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults.next = append(s.faults.next, f)
	}
}

// FailFor answers every authorised request with f for the duration d.
func (s *Server) FailFor(d time.Duration, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.until = time.Now().Add(d)
	s.faults.window = f
}

// FailSecret answers every authorised request about the named secret with
// f until ClearFaults: a role revoked for one secret, say.
func (s *Server) FailSecret(name string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.perSecret == nil {
		s.faults.perSecret = map[string]Fault{}
	}
	s.faults.perSecret[strings.ToLower(name)] = f
}

// ClearFaults removes every fault set by FailNext, FailFor and FailSecret.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.next, s.faults.until, s.faults.perSecret = nil, time.Time{}, nil
}

// SetLatency delays every answer by d (zero for none), the challenge too.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.latency = d
}

// SetThrottle limits authorised requests to limit per window, as Key Vault
// does (4,000 GET-class requests per 10 seconds per vault), answering
// Throttled beyond it. A limit of 0 turns throttling off. The window is
// fixed: it starts with its first request.
func (s *Server) SetThrottle(limit int, window time.Duration) {
	s.SetThrottleFault(limit, window, Throttled)
}

// SetThrottleFault is SetThrottle with a chosen answer, e.g. Throttled with
// a RetryAfter.
func (s *Server) SetThrottleFault(limit int, window time.Duration, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.throttleLimit, s.faults.throttleWindow, s.faults.throttleFault = limit, window, f
	s.faults.throttleStart, s.faults.throttleCount = time.Time{}, 0
}

func (s *Server) latency() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.latency
}

// nextFault returns the fault for an authorised request about name, if any.
func (s *Server) nextFault(name string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := &s.faults
	now := time.Now()
	if fs.throttleLimit > 0 {
		if fs.throttleStart.IsZero() || now.Sub(fs.throttleStart) >= fs.throttleWindow {
			fs.throttleStart, fs.throttleCount = now, 0
		}
		fs.throttleCount++
		if fs.throttleCount > fs.throttleLimit {
			s.stats.counts.Throttled++
			return fs.throttleFault, true
		}
	}
	if f, ok := fs.perSecret[strings.ToLower(name)]; ok && name != "" {
		s.stats.counts.Faulted++
		return f, true
	}
	if len(fs.next) > 0 {
		f := fs.next[0]
		fs.next = fs.next[1:]
		s.stats.counts.Faulted++
		return f, true
	}
	if now.Before(fs.until) {
		s.stats.counts.Faulted++
		return fs.window, true
	}
	return Fault{}, false
}

// applyFault writes f, or drops the connection; it reports whether an
// answer was written.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, f Fault) bool {
	if f.Drop {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
			return false
		}
		if rec, ok := w.(*recorder); ok {
			rec.status = -1
		}
		panic(http.ErrAbortHandler) // the server closes the connection
	}
	if f.ResetMidBody {
		body := `{"value":"this answer is cut short before its end","id":"https://x/secrets/x/0"}`
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, body[:len(body)/2])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // the server closes the connection mid-body
	}
	e := &apiError{status: f.Status, code: f.Code, inner: f.InnerCode, message: f.Message}
	if f.RetryAfter != "" {
		e.extraHeaders = http.Header{"Retry-After": {f.RetryAfter}}
	}
	writeError(w, e)
	return true
}

// Request is one entry of the request log.
type Request struct {
	Time       time.Time
	Method     string
	Path       string
	Op         string // get, set, update, delete, list, versions, backup, restore, getDeleted, purge, recover, listDeleted; "" if unknown
	Secret     string // the secret named in the path, if any
	Version    string
	Status     int  // the status answered; -1 for a dropped connection or an answer cut short (DropConnection, ResetMidBody)
	Authorized bool // carried a token the server issued
	// RequestID is the x-ms-request-id the server answered with, as an
	// SDK's error shows it ("" for a dropped connection).
	RequestID string
}

// Counts are the server's request counters.
type Counts struct {
	Total           int64 // every request
	Unauthenticated int64 // answered with the 401 challenge
	Faulted         int64 // answered with an injected fault
	Throttled       int64 // answered by the throttle
}

type stats struct {
	counts    Counts
	perSecret map[string]int64 // GETs of a secret's value, by lower-case name
	log       []Request
}

// maxLog bounds the request log; older entries are dropped.
const maxLog = 10000

func (s *Server) logRequest(r *http.Request, rt route, authorised bool, status int, requestID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats
	st.counts.Total++
	if !authorised {
		st.counts.Unauthenticated++
	}
	if rt.op == "get" && authorised {
		st.perSecret[strings.ToLower(rt.name)]++
	}
	if len(st.log) >= maxLog {
		st.log = append(st.log[:0], st.log[len(st.log)-maxLog/2:]...)
	}
	st.log = append(st.log, Request{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Op: rt.op,
		Secret: rt.name, Version: rt.version, Status: status, Authorized: authorised, RequestID: requestID})
}

// Counts returns the request counters.
func (s *Server) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.counts
}

// SecretRequests returns how many authorised GETs of the named secret's
// value (latest or a version) the server has received, faulted ones
// included.
func (s *Server) SecretRequests(name string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.perSecret[strings.ToLower(name)]
}

// RequestLog returns the most recent requests (up to 10,000), oldest first.
func (s *Server) RequestLog() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.stats.log...)
}

// ResetCounts zeroes the counters and empties the request log.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = stats{perSecret: map[string]int64{}}
}

// SecretOptions are the optional attributes of SetSecret.
type SecretOptions struct {
	ContentType string
	Tags        map[string]string
	Disabled    bool
	NotBefore   time.Time // zero for none
	Expires     time.Time // zero for none
}

// SetSecret stores a new version of the named secret directly (no HTTP,
// not counted) and returns its version id.
func (s *Server) SetSecret(name, value string, o *SecretOptions) (string, error) {
	if o == nil {
		o = &SecretOptions{}
	}
	req := setRequest{Value: &value, Tags: o.Tags}
	if o.ContentType != "" {
		req.ContentType = &o.ContentType
	}
	enabled := !o.Disabled
	req.Attributes = &struct {
		Enabled *bool  `json:"enabled"`
		NBF     *int64 `json:"nbf"`
		EXP     *int64 `json:"exp"`
	}{Enabled: &enabled, NBF: unix(o.NotBefore), EXP: unix(o.Expires)}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ver, err := s.vault.set(name, req, time.Now())
	if err != nil {
		return "", fmt.Errorf("kvtest: SetSecret: %s", err.message)
	}
	s.newVersionLocked(sec, ver)
	return ver.id, nil
}

func unix(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	u := t.Unix()
	return &u
}

// Seed stores one version of each name → value.
func (s *Server) Seed(values map[string]string) error {
	for name, value := range values {
		if _, err := s.SetSecret(name, value, nil); err != nil {
			return err
		}
	}
	return nil
}

// SetEnabled enables or disables a version of a secret ("" for the latest).
// A disabled version answers 403 Forbidden/SecretDisabled.
func (s *Server) SetEnabled(name, version string, enabled bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ver, err := s.vault.get(name, version)
	if err != nil {
		return fmt.Errorf("%w: %s", errUnknownSecret, name)
	}
	ver.enabled = enabled
	ver.updated = time.Now().Unix()
	return nil
}

// DeleteSecret deletes a secret (soft delete: it can be listed, recovered
// and purged through the deletedsecrets endpoints).
func (s *Server) DeleteSecret(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(name)
	sec := s.vault.active[key]
	if sec == nil {
		return fmt.Errorf("%w: %s", errUnknownSecret, name)
	}
	delete(s.vault.active, key)
	sec.deletedDate = time.Now().Unix()
	sec.scheduledPurgeDate = time.Now().Add(recoverableDays * 24 * time.Hour).Unix()
	s.vault.deleted[key] = sec
	return nil
}

// Versions returns the version ids of a secret, newest first.
func (s *Server) Versions(name string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.vault.active[strings.ToLower(name)]
	if sec == nil {
		return nil, fmt.Errorf("%w: %s", errUnknownSecret, name)
	}
	out := make([]string, 0, len(sec.versions))
	for i := len(sec.versions) - 1; i >= 0; i-- {
		out = append(out, sec.versions[i].id)
	}
	return out, nil
}
