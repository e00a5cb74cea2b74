package kvsecrets

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets/fake"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// Memory and time under hostile input, each beside a baseline measured in
// the same run: go test -run '^$' -bench 'Hostile' -benchmem

// heapNow returns the live heap after two collections.
func heapNow() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// hostileVault is a local vault (real error bodies, as Key Vault sends
// them) with one secret, and a Provider on it with o.
func hostileVault(b testing.TB, o *Options) (*kvtest.Server, *Provider) {
	vault, err := kvtest.NewInProcess(nil)
	if err != nil {
		b.Fatal(err)
	}
	vault.SetSecret("real", strings.Repeat("v", 32), nil)
	opts := Options{}
	if o != nil {
		opts = *o
	}
	opts.ClientOptions = vault.ClientOptions()
	p, err := NewProvider(vault.URL(), vault.Credential(), &opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close(); vault.Close() })
	return vault, p
}

// BenchmarkHostileMemoryPerMissingName reads 10,000 distinct names the
// vault does not hold and reports the heap each keeps while its miss is
// remembered (within NegativeTTL), beside a map[string]string entry of
// the same name and a 32-byte value.
func BenchmarkHostileMemoryPerMissingName(b *testing.B) {
	const n = 10000
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("missing-name-%05d", i)
	}
	b.Run("map-baseline", func(b *testing.B) {
		for b.Loop() {
			before := heapNow()
			m := make(map[string]string)
			for _, name := range names {
				m[strings.Clone(name)] = strings.Repeat("v", 32)
			}
			b.ReportMetric(float64(heapNow()-before)/n, "bytes/name")
			runtime.KeepAlive(m)
		}
	})
	for _, what := range []string{"Get", "Verify"} {
		b.Run(what, func(b *testing.B) {
			for b.Loop() {
				vault, p := hostileVault(b, &Options{NegativeTTL: time.Hour, MaxEntries: 4 * n})
				_ = p.Preload(context.Background(), "real") // the client's fixed costs
				before := heapNow()
				for _, name := range names {
					var err error
					if what == "Get" {
						_, err = p.Get(context.Background(), strings.Clone(name))
					} else {
						_, err = p.Verify(context.Background(), strings.Clone(name), "key")
					}
					if err == nil {
						b.Fatal("a missing name was found")
					}
				}
				vault.ResetCounts() // the vault's own per-name counters and log
				b.ReportMetric(float64(heapNow()-before)/n, "bytes/name")
				if st := p.Stats(); st.Evictions != 0 {
					b.Fatalf("evictions %d", st.Evictions)
				}
			}
		})
	}
}

// anyVersionVault answers every GetSecret with a value for the version
// asked, holding nothing, so that what grows is the Provider's alone.
func anyVersionVault(b testing.TB, o *Options) *Provider {
	srv := &fake.Server{GetSecret: func(_ context.Context, name, version string, _ *azsecrets.GetSecretOptions) (resp azfake.Responder[azsecrets.GetSecretResponse], errResp azfake.ErrorResponder) {
		if version == "" {
			version = "0000000000000000000000000000000a"
		}
		id := azsecrets.ID(fakeVaultURL + "secrets/" + name + "/" + version)
		value := "value-of-" + version
		resp.SetResponse(http.StatusOK, azsecrets.GetSecretResponse{Secret: azsecrets.Secret{ID: &id, Value: &value}}, nil)
		return
	}}
	opts := Options{}
	if o != nil {
		opts = *o
	}
	opts.ClientOptions = &azsecrets.ClientOptions{ClientOptions: policyOptions(fake.NewServerTransport(srv))}
	p, err := NewProvider(fakeVaultURL, &azfake.TokenCredential{}, &opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// BenchmarkHostilePinnedVersions pins 4 blocks of 4,000 new versions of
// one name and reports the time each block takes, the last against the
// first (flat: about 1), and the heap each pinned version keeps.
func BenchmarkHostilePinnedVersions(b *testing.B) {
	const block, blocks = 4000, 4
	for b.Loop() {
		p := anyVersionVault(b, &Options{MaxEntries: 2 * block * blocks})
		if _, err := p.Get(context.Background(), "K"); err != nil {
			b.Fatal(err)
		}
		before := heapNow()
		var took []time.Duration
		for k := range blocks {
			start := time.Now()
			for i := range block {
				version := fmt.Sprintf("%032x", k*block+i+1)
				if _, err := p.GetVersion(context.Background(), "K", version); err != nil {
					b.Fatal(err)
				}
			}
			took = append(took, time.Since(start))
		}
		b.ReportMetric(float64(heapNow()-before)/(block*blocks), "bytes/version")
		b.ReportMetric(float64(took[0].Microseconds()), "µs/first-block")
		b.ReportMetric(float64(took[blocks-1].Microseconds()), "µs/last-block")
		b.ReportMetric(float64(took[blocks-1])/float64(took[0]), "last/first")
	}
}
