package kvsecrets

import (
	"context"
	"sync"
	"testing"
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
