package kvsecrets

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// The cached read path against a bare sync.Map lookup, measured in the same
// run: go test -run '^$' -bench 'Cached|SyncMap' -benchmem

func benchProvider(b *testing.B) *Provider {
	v := newFakeVault()
	v.set("MyApiKey", "value")
	p := v.newProvider(b, nil)
	if _, err := p.Get(context.Background(), "MyApiKey"); err != nil {
		b.Fatal(err)
	}
	return p
}

func BenchmarkCachedGet(b *testing.B) {
	p := benchProvider(b)
	ctx := context.Background()
	name := "MyApiKey"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Get(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCachedGetParallel(b *testing.B) {
	p := benchProvider(b)
	ctx := context.Background()
	name := "MyApiKey"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Get(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
	})
}

var sink any

func BenchmarkSyncMapLoad(b *testing.B) {
	var m sync.Map
	m.Store("MyApiKey", "value")
	name := "MyApiKey"
	b.ReportAllocs()
	for b.Loop() {
		v, ok := m.Load(name)
		if !ok {
			b.Fatal("missing")
		}
		sink = v
	}
}

func BenchmarkSyncMapLoadParallel(b *testing.B) {
	var m sync.Map
	m.Store("MyApiKey", "value")
	name := "MyApiKey"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := m.Load(name); !ok {
				b.Fatal("missing")
			}
		}
	})
}

// BenchmarkColdBurst1000 starts 1,000 callers of one uncached name at once
// and reports the vault reads they cost (the target is exactly 1).
func BenchmarkColdBurst1000(b *testing.B) {
	var reads int64
	for b.Loop() {
		v := newFakeVault()
		v.set("Burst", "value")
		v.latency = time.Millisecond
		p := v.newProvider(b, nil)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 1000 {
			wg.Go(func() {
				<-start
				if _, err := p.Get(context.Background(), "Burst"); err != nil {
					b.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		reads += v.requests.Load()
		p.Close()
	}
	b.ReportMetric(float64(reads)/float64(b.N), "vault-reads/op")
}

// Preload of 100 secrets at 50 ms per vault read, against reading them one
// after the other with the bare SDK client in the same run.
func BenchmarkPreload100At50ms(b *testing.B) {
	names := make([]string, 100)
	for i := range names {
		names[i] = "secret-" + strconv.Itoa(i)
	}
	b.Run("sequential-sdk", func(b *testing.B) {
		v := newFakeVault()
		for _, n := range names {
			v.set(n, "x")
		}
		v.latency = 50 * time.Millisecond
		c, err := azsecrets.NewClient(fakeVaultURL, &azfake.TokenCredential{}, v.clientOptions())
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			for _, n := range names {
				if _, err := c.GetSecret(context.Background(), n, "", nil); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	// With pacing (the default) and without: what the pacer's slow start
	// (4 requests at once, then 100 a second) costs a service starting
	// alone.
	for _, c := range []struct {
		name string
		o    *Options
	}{{"preload", nil}, {"preload-no-pacing", &Options{DisablePacing: true}}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				v := newFakeVault()
				for _, n := range names {
					v.set(n, "x")
				}
				v.latency = 50 * time.Millisecond
				p := v.newProvider(b, c.o)
				if err := p.Preload(context.Background(), names...); err != nil {
					b.Fatal(err)
				}
				p.Close()
			}
		})
	}
}

// A cached Get against one uncached read with the bare SDK client over
// loopback HTTPS (challenge done once, connection kept alive).
func BenchmarkUncachedSDKGetHTTPS(b *testing.B) {
	srv := kvtest.NewTestServer(b, nil)
	srv.Seed(map[string]string{"MyApiKey": "value"})
	c, err := azsecrets.NewClient(srv.URL(), srv.Credential(), srv.ClientOptions())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.GetSecret(context.Background(), "MyApiKey", "", nil); err != nil {
			b.Fatal(err)
		}
	}
}

// A cached Verify of the latest key, beside the cached Get.
func BenchmarkCachedVerify(b *testing.B) {
	v := newFakeVault()
	v.set("ApiKey", "k-0123456789abcdef0123456789abcdef")
	p := v.newProvider(b, nil)
	ctx := context.Background()
	if _, err := p.Verify(ctx, "ApiKey", "k-0123456789abcdef0123456789abcdef"); err != nil {
		b.Fatal(err)
	}
	presented := "k-0123456789abcdef0123456789abcdef"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Verify(ctx, "ApiKey", presented); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryPer10kSecrets caches 10,000 secrets with 32-byte values
// and reports the heap each costs, beside a plain map[string]string of the
// same names and values built in the same run.
func BenchmarkMemoryPer10kSecrets(b *testing.B) {
	const n = 10000
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("secret-name-%05d", i)
	}
	value := strings.Repeat("v", 32)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	b.Run("map-baseline", func(b *testing.B) {
		for b.Loop() {
			before := heap()
			m := make(map[string]string)
			for _, name := range names {
				m[strings.Clone(name)] = strings.Clone(value)
			}
			b.ReportMetric(float64(heap()-before)/n, "bytes/secret")
			runtime.KeepAlive(m)
		}
	})
	b.Run("syncmap-baseline", func(b *testing.B) {
		for b.Loop() {
			before := heap()
			var m sync.Map
			for _, name := range names {
				m.Store(strings.Clone(name), strings.Clone(value))
			}
			for _, name := range names {
				m.Load(name) // promote the dirty map, as reads do
			}
			b.ReportMetric(float64(heap()-before)/n, "bytes/secret")
			runtime.KeepAlive(&m)
		}
	})
	b.Run("provider", func(b *testing.B) {
		for b.Loop() {
			v := newFakeVault()
			for _, name := range names {
				v.set(name, value)
			}
			v.noLog = true
			before := heap()
			p := v.newProvider(b, &Options{PreloadConcurrency: 64})
			if err := p.Preload(context.Background(), names...); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(heap()-before)/n, "bytes/secret")
			p.Close()
		}
	})
}

// A cached Handle.Get against the bare sync.Map lookup, in the same run:
// go test -run '^$' -bench 'HandleGet|SyncMapLoad' -benchmem -count 5 .
func BenchmarkHandleGet(b *testing.B) {
	p := benchProvider(b)
	h, err := p.Handle("MyApiKey")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Get(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHandleGetParallel(b *testing.B) {
	p := benchProvider(b)
	h, err := p.Handle("MyApiKey")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := h.Get(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The ratio of a cached Handle.Get (and Get) to a sync.Map Load, measured
// in alternating blocks of one benchmark so that both see the same machine
// load (shared CI machines drift by 2× within a run):
// go test -run '^$' -bench 'VsSyncMap' -benchmem -count 5 .
func BenchmarkHandleGetVsSyncMap(b *testing.B) {
	p := benchProvider(b)
	h, err := p.Handle("MyApiKey")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) { ratioBench(b, false, func() { h.Get(ctx) }) })
	b.Run("parallel", func(b *testing.B) { ratioBench(b, true, func() { h.Get(ctx) }) })
}

func BenchmarkCachedGetVsSyncMap(b *testing.B) {
	p := benchProvider(b)
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) { ratioBench(b, false, func() { p.Get(ctx, "MyApiKey") }) })
	b.Run("parallel", func(b *testing.B) { ratioBench(b, true, func() { p.Get(ctx, "MyApiKey") }) })
}

// ratioBench runs read and a sync.Map Load in alternating blocks of 10,000
// (on every P with parallel) and reports read's time over the Load's.
func ratioBench(b *testing.B, parallel bool, read func()) {
	var m sync.Map
	m.Store("MyApiKey", "value")
	const block = 10000
	var tRead, tMap atomic.Int64
	run := func(blocks func() bool) {
		var local any
		for blocks() {
			t0 := time.Now()
			for range block {
				read()
			}
			t1 := time.Now()
			for range block {
				local, _ = m.Load("MyApiKey")
			}
			t2 := time.Now()
			tRead.Add(int64(t1.Sub(t0)))
			tMap.Add(int64(t2.Sub(t1)))
		}
		sink = local
	}
	b.ReportAllocs()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			run(func() bool {
				for range block {
					if !pb.Next() {
						return false
					}
				}
				return true
			})
		})
	} else {
		n := 0
		run(func() bool { n += block; return n <= b.N })
	}
	if tMap.Load() > 0 {
		b.ReportMetric(float64(tRead.Load())/float64(tMap.Load()), "×syncmap")
	}
}
