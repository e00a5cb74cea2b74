package hostile_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// env builds a vault and a provider; call inside a synctest bubble or not.
func env(t *testing.T, o *kvsecrets.Options) (*kvtest.Server, *kvsecrets.Provider, *syncBuf) {
	t.Helper()
	vault, err := kvtest.NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o == nil {
		o = &kvsecrets.Options{}
	}
	logs := &syncBuf{}
	o.ClientOptions = vault.ClientOptions()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); vault.Close() })
	return vault, p, logs
}

func set(t *testing.T, v *kvtest.Server, name, value string) string {
	t.Helper()
	ver, err := v.SetSecret(name, value, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ver
}

// allPrints renders x in every way a careless program might.
func allPrints(x any) string {
	var b strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %p"} {
		fmt.Fprintf(&b, verb+"\n", x)
	}
	fmt.Fprintln(&b, x)
	var jb bytes.Buffer
	slog.New(slog.NewJSONHandler(&jb, nil)).Info("m", "x", x)
	slog.New(slog.NewTextHandler(&jb, nil)).Info("m", "x", x)
	b.WriteString(jb.String())
	return b.String()
}

// walk collects every string and byte slice reachable from v by reflection,
// following pointers, interfaces, maps, slices and unexported fields, skipping
// types in skip (by name substring).
func walk(v reflect.Value, out *[]string, seen map[uintptr]bool, skip []string, depth int) {
	if depth > 60 || !v.IsValid() {
		return
	}
	for _, s := range skip {
		if strings.Contains(v.Type().String(), s) {
			return
		}
	}
	switch v.Kind() {
	case reflect.String:
		*out = append(*out, v.String())
	case reflect.Pointer:
		if v.IsNil() || seen[v.Pointer()] {
			return
		}
		seen[v.Pointer()] = true
		walk(v.Elem(), out, seen, skip, depth+1)
	case reflect.UnsafePointer:
		// cannot type it; ignore
	case reflect.Interface:
		walk(v.Elem(), out, seen, skip, depth+1)
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			walk(v.Field(i), out, seen, skip, depth+1)
		}
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8 {
			*out = append(*out, string(v.Bytes()))
			return
		}
		for i := 0; i < v.Len() && i < 10000; i++ {
			walk(v.Index(i), out, seen, skip, depth+1)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			walk(it.Key(), out, seen, skip, depth+1)
			walk(it.Value(), out, seen, skip, depth+1)
		}
	}
}

func reachable(x any, skip ...string) string {
	var out []string
	walk(reflect.ValueOf(x), &out, map[uintptr]bool{}, skip, 0)
	return strings.Join(out, "\x00")
}

func mustNotContain(t *testing.T, what, hay string, needles ...string) {
	t.Helper()
	for _, n := range needles {
		if strings.Contains(hay, n) {
			i := strings.Index(hay, n)
			lo, hi := max(0, i-120), min(len(hay), i+len(n)+60)
			t.Errorf("%s leaks %q: ...%s...", what, n, hay[lo:hi])
		}
	}
}

var _ = context.Background
var _ = time.Second

type kvsecretsVault struct{ *kvtest.Server }
