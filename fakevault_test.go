package kvsecrets

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets/fake"
)

// fakeVault is an in-memory vault served to the real azsecrets client
// through the SDK's own fake transport (azsecrets/fake), so that tests run
// the real client and pipeline and, under testing/synctest, on a fake clock.
type fakeVault struct {
	url      string // the vault's URL; ids use it
	mu       sync.Mutex
	secrets  map[string]*fvSecret // by lower-case name
	nextVer  int
	fail     func(name string) (status int, code string) // non-zero status: answer with that error
	failErr  error                                       // when set, answer with this transport-level error
	gate     chan struct{}                               // when set, GETs wait for it to close
	latency  time.Duration                               // added to every GET
	requests atomic.Int64
	perName  map[string]int
	log      []fvRequest
	inflight atomic.Int64
	peak     atomic.Int64

	shuffle    func([]*fvVersion) // when set, reorders each versions listing
	noLog      bool               // keep no request log (memory benchmarks)
	writes     int                // SetSecret calls
	failWrites int                // when non-zero, SetSecret answers this status
}

type fvRequest struct {
	At            time.Time
	Name, Version string
}

type fvSecret struct {
	name     string
	versions []*fvVersion
}

type fvVersion struct {
	id, value, contentType string
	enabled                bool
	nbf, exp, created      time.Time
	tags                   map[string]string
}

const fakeVaultURL = "https://fake.vault.azure.net/"

func newFakeVault() *fakeVault {
	return &fakeVault{url: fakeVaultURL, secrets: map[string]*fvSecret{}, perName: map[string]int{}}
}

// set adds a new version and returns its id.
func (v *fakeVault) set(name, value string, opts ...func(*fvVersion)) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.nextVer++
	// As Key Vault does: ids in no chronological order, created stamped to
	// the second.
	id := fmt.Sprintf("%x", sha256.Sum256(fmt.Appendf(nil, "%d", v.nextVer)))[:32]
	ver := &fvVersion{id: id, value: value, enabled: true, created: time.Now().Truncate(time.Second)}
	for _, o := range opts {
		o(ver)
	}
	s := v.secrets[strings.ToLower(name)]
	if s == nil {
		s = &fvSecret{name: name}
		v.secrets[strings.ToLower(name)] = s
	}
	s.versions = append(s.versions, ver)
	return ver.id
}

func withExp(t time.Time) func(*fvVersion) { return func(v *fvVersion) { v.exp = t } }
func withID(id string) func(*fvVersion)    { return func(v *fvVersion) { v.id = id } }
func withNbf(t time.Time) func(*fvVersion) { return func(v *fvVersion) { v.nbf = t } }

// disable disables a version of name.
func (v *fakeVault) disable(name, version string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, x := range v.secrets[strings.ToLower(name)].versions {
		if x.id == version {
			x.enabled = false
		}
	}
}

func (v *fakeVault) delete(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.secrets, strings.ToLower(name))
}

func (v *fakeVault) setFail(f func(name string) (int, string)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.fail = f
}

func (v *fakeVault) setFailErr(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.failErr = err
}

func (v *fakeVault) count(name string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.perName[strings.ToLower(name)]
}

func (v *fakeVault) requestLog() []fvRequest {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]fvRequest(nil), v.log...)
}

func (v *fakeVault) getSecret(ctx context.Context, name, version string, _ *azsecrets.GetSecretOptions) (resp azfake.Responder[azsecrets.GetSecretResponse], errResp azfake.ErrorResponder) {
	n := v.inflight.Add(1)
	defer v.inflight.Add(-1)
	for {
		p := v.peak.Load()
		if n <= p || v.peak.CompareAndSwap(p, n) {
			break
		}
	}
	v.requests.Add(1)
	v.mu.Lock()
	if !v.noLog {
		v.perName[strings.ToLower(name)]++
		v.log = append(v.log, fvRequest{At: time.Now(), Name: name, Version: version})
	}
	gate, latency := v.gate, v.latency
	v.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			errResp.SetError(ctx.Err())
			return
		}
	}
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-ctx.Done():
			errResp.SetError(ctx.Err())
			return
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.failErr != nil {
		errResp.SetError(v.failErr)
		return
	}
	if v.fail != nil {
		if status, code := v.fail(name); status != 0 {
			errResp.SetResponseError(status, code)
			return
		}
	}
	s := v.secrets[strings.ToLower(name)]
	if s == nil {
		errResp.SetResponseError(http.StatusNotFound, "SecretNotFound")
		return
	}
	var ver *fvVersion
	if version == "" {
		ver = s.versions[len(s.versions)-1]
	} else {
		for _, x := range s.versions {
			if strings.EqualFold(x.id, version) {
				ver = x
			}
		}
		if ver == nil {
			errResp.SetResponseError(http.StatusNotFound, "SecretNotFound")
			return
		}
	}
	if !ver.enabled {
		errResp.SetResponseError(http.StatusForbidden, "Forbidden")
		return
	}
	resp.SetResponse(http.StatusOK, azsecrets.GetSecretResponse{Secret: v.sdkSecret(s, ver)}, nil)
	return
}

func (v *fakeVault) setSecret(_ context.Context, name string, params azsecrets.SetSecretParameters, _ *azsecrets.SetSecretOptions) (resp azfake.Responder[azsecrets.SetSecretResponse], errResp azfake.ErrorResponder) {
	v.mu.Lock()
	v.writes++
	fail := v.failWrites
	v.mu.Unlock()
	if fail != 0 {
		errResp.SetResponseError(fail, "Forbidden")
		return
	}
	opts := []func(*fvVersion){}
	if a := params.SecretAttributes; a != nil {
		if a.Expires != nil {
			opts = append(opts, withExp(*a.Expires))
		}
		if a.NotBefore != nil {
			opts = append(opts, withNbf(*a.NotBefore))
		}
	}
	id := v.set(name, *params.Value, opts...)
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.secrets[strings.ToLower(name)]
	ver := s.versions[len(s.versions)-1]
	if params.ContentType != nil {
		ver.contentType = *params.ContentType
	}
	resp.SetResponse(http.StatusOK, azsecrets.SetSecretResponse{Secret: v.sdkSecret(s, ver)}, nil)
	_ = id
	return
}

func (v *fakeVault) listVersions(name string, _ *azsecrets.ListSecretPropertiesVersionsOptions) (resp azfake.PagerResponder[azsecrets.ListSecretPropertiesVersionsResponse]) {
	v.requests.Add(1)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fail != nil {
		if status, code := v.fail(name); status != 0 {
			resp.AddResponseError(status, code)
			return
		}
	}
	s := v.secrets[strings.ToLower(name)]
	if s == nil {
		resp.AddResponseError(http.StatusNotFound, "SecretNotFound")
		return
	}
	// Two to a page, in version-id order as Key Vault lists them (see
	// TestVerifySameSecondVersionsOfARealListing), to exercise paging and
	// the ordering rule.
	vers := slices.Clone(s.versions)
	slices.SortFunc(vers, func(a, b *fvVersion) int { return strings.Compare(a.id, b.id) })
	if v.shuffle != nil {
		v.shuffle(vers)
	}
	var page []*azsecrets.SecretProperties
	for i, ver := range vers {
		sec := v.sdkSecret(s, ver)
		page = append(page, &azsecrets.SecretProperties{ID: sec.ID, Attributes: sec.Attributes})
		if len(page) == 2 || i == len(vers)-1 {
			resp.AddPage(http.StatusOK, azsecrets.ListSecretPropertiesVersionsResponse{
				SecretPropertiesListResult: azsecrets.SecretPropertiesListResult{Value: page}}, nil)
			page = nil
		}
	}
	return
}

func (v *fakeVault) sdkSecret(s *fvSecret, ver *fvVersion) azsecrets.Secret {
	id := azsecrets.ID(v.url + "secrets/" + s.name + "/" + ver.id)
	out := azsecrets.Secret{ID: &id, Value: to.Ptr(ver.value), Attributes: &azsecrets.SecretAttributes{
		Enabled: to.Ptr(ver.enabled), Created: to.Ptr(ver.created), Updated: to.Ptr(ver.created)}}
	if !ver.nbf.IsZero() {
		out.Attributes.NotBefore = to.Ptr(ver.nbf)
	}
	if !ver.exp.IsZero() {
		out.Attributes.Expires = to.Ptr(ver.exp)
	}
	if ver.contentType != "" {
		out.ContentType = to.Ptr(ver.contentType)
	}
	if len(ver.tags) > 0 {
		out.Tags = map[string]*string{}
		for k, val := range ver.tags {
			out.Tags[k] = to.Ptr(val)
		}
	}
	return out
}

// clientOptions wires the fake vault into an azsecrets client.
func (v *fakeVault) clientOptions() *azsecrets.ClientOptions {
	srv := &fake.Server{GetSecret: v.getSecret, SetSecret: v.setSecret, NewListSecretPropertiesVersionsPager: v.listVersions}
	return &azsecrets.ClientOptions{ClientOptions: policyOptions(fake.NewServerTransport(srv))}
}

// newProvider returns a Provider on the fake vault, closed when the test ends.
func (v *fakeVault) newProvider(t testing.TB, o *Options) *Provider {
	t.Helper()
	if o == nil {
		o = &Options{}
	}
	o.ClientOptions = v.clientOptions()
	p, err := NewProvider(v.url, &azfake.TokenCredential{}, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func policyOptions(tr policy.Transporter) azcore.ClientOptions {
	return azcore.ClientOptions{Transport: tr}
}
