package kvsecrets_test

// This file holds the Go code the README and the doc comments show, as
// they show it, so that it is compiled (and, where it can run without
// Azure, run) by the tests. TestDocCodeIsCompiled fails when a block of the
// README or of a doc comment is found in no compiled Go file: change the
// copy here (or the Example it lives in) together with the text.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// TestDocCodeIsCompiled checks that every ```go block of README.md, and
// every code block of a doc comment in the module that parses as Go, appears
// line for line (indentation and alignment aside) in a Go file of the
// module, where the build checks it.
func TestDocCodeIsCompiled(t *testing.T) {
	type block struct{ where, code string }
	var blocks []block

	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var cur *strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(readme))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```go":
			cur, start = &strings.Builder{}, n+1
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, block{fmt.Sprintf("README.md:%d", start), cur.String()})
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	if len(blocks) < 7 {
		t.Fatalf("found %d Go blocks in README.md; the scan is broken", len(blocks))
	}

	corpus := map[string][]string{} // file -> its normalised lines
	var docBlocks int
	fset := token.NewFileSet()
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != "." && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		corpus[path] = normalise(string(src))
		if strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, src, parser.ParseComments)
		if err != nil {
			return err
		}
		var p comment.Parser
		for _, cg := range f.Comments {
			for _, b := range p.Parse(cg.Text()).Content {
				if c, ok := b.(*comment.Code); ok && isGo(c.Text) {
					blocks = append(blocks, block{fset.Position(cg.Pos()).String(), c.Text})
					docBlocks++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if docBlocks < 3 {
		t.Fatalf("found %d Go blocks in doc comments; the scan is broken", docBlocks)
	}

	for _, b := range blocks {
		want := normalise(b.code)
		found := false
		for _, lines := range corpus {
			if containsRun(lines, want) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("%s: this Go block is in no Go file of the module, so nothing compiles it; "+
				"keep a copy in readme_test.go or an Example:\n%s", b.where, b.code)
		}
	}
}

// normalise returns src's non-blank lines with their runs of spaces and
// tabs made one space, so that indentation and gofmt's alignment do not
// count.
func normalise(src string) []string {
	var out []string
	for line := range strings.Lines(src) {
		if l := strings.Join(strings.Fields(line), " "); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// containsRun reports whether want appears as consecutive lines of lines.
func containsRun(lines, want []string) bool {
	for i := 0; i+len(want) <= len(lines); i++ {
		j := 0
		for j < len(want) && lines[i+j] == want[j] {
			j++
		}
		if j == len(want) {
			return true
		}
	}
	return false
}

// isGo reports whether code parses as Go declarations or statements (doc
// comments also hold tables, grammars and shell commands).
func isGo(code string) bool {
	fset := token.NewFileSet()
	if _, err := parser.ParseFile(fset, "", "package p\n"+code, 0); err == nil {
		return true
	}
	_, err := parser.ParseFile(fset, "", "package p\nfunc _() {\n"+code+"\n}", 0)
	return err == nil
}

// The package doc (doc.go).
func docPackage(ctx context.Context) error {
	p, err := kvsecrets.NewProvider("https://myvault.vault.azure.net/", nil, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	key, err := p.Get(ctx, "MyApiKey")
	log.Printf("%d characters", len(key))
	return err
}

// DBConfig and CacheConfig are the README's and Load's doc's nested configs.
type DBConfig struct {
	Host string `json:"host"`
	Port int    `json:"port"`
}

type CacheConfig struct {
	Password string `keyvault:"CachePassword"`
}

// Load's doc (load.go).
func docLoad() any {
	type Config struct {
		StripeKey string           `keyvault:"StripeKey"`
		TLSKey    []byte           `keyvault:"TlsKey"`
		Partner   kvsecrets.Secret `keyvault:"PartnerApiKey"`
		Bind      netip.Addr       `keyvault:"BindAddr"`           // any encoding.TextUnmarshaler
		Endpoint  *url.URL         `keyvault:"ServiceUrl"`         // or encoding.BinaryUnmarshaler
		DB        DBConfig         `keyvault:"DbConfig,json"`      // a JSON secret
		Sentry    string           `keyvault:"SentryDsn,optional"` // left as is if the secret does not exist
		Legacy    string           `keyvault:"@Microsoft.KeyVault(VaultName=old-kv;SecretName=Key)"`
		Cache     CacheConfig      // untagged structs and pointers to structs are walked
	}
	return &Config{}
}

// README, "Loading a configuration at start-up".
func readmeLoad(ctx context.Context, secrets *kvsecrets.Provider) {
	type Config struct {
		StripeKey string           `keyvault:"StripeKey"`
		TLSKey    []byte           `keyvault:"TlsKey"`
		Partner   kvsecrets.Secret `keyvault:"PartnerApiKey"`       // value and metadata
		Bind      netip.Addr       `keyvault:"BindAddr"`            // any encoding.TextUnmarshaler
		Endpoint  *url.URL         `keyvault:"PartnerUrl"`          // or encoding.BinaryUnmarshaler
		DB        DBConfig         `keyvault:"DatabaseConfig,json"` // a JSON secret
		Sentry    string           `keyvault:"SentryDsn,optional"`  // untouched if absent
		Legacy    string           `keyvault:"@Microsoft.KeyVault(VaultName=old-kv;SecretName=Key)"`
		Cache     CacheConfig      // untagged structs and pointers to structs are walked
	}
	var cfg Config
	if err := secrets.Load(ctx, &cfg); err != nil {
		log.Fatal(err) // field Config.TLSKey (secret "TlsKey" in vault myvault.vault.azure.net): kvsecrets: secret "TlsKey": secret not found (404 SecretNotFound), one line per field
	}
}

// TestREADMELoadPlan checks the README's and the doc's Config types against
// Load's rules: a misuse would be reported before any request, so a Load
// of each on a vault holding none of the secrets fails only with "not
// found".
func TestREADMELoadPlan(t *testing.T) {
	type readmeConfig struct {
		StripeKey string           `keyvault:"StripeKey"`
		TLSKey    []byte           `keyvault:"TlsKey"`
		Partner   kvsecrets.Secret `keyvault:"PartnerApiKey"`
		Bind      netip.Addr       `keyvault:"BindAddr"`
		Endpoint  *url.URL         `keyvault:"PartnerUrl"`
		DB        DBConfig         `keyvault:"DatabaseConfig,json"`
		Sentry    string           `keyvault:"SentryDsn,optional"`
		Cache     CacheConfig
	}
	vault := kvtest.NewTestServer(t, nil)
	secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer secrets.Close()
	for _, dst := range []any{docLoad(), &readmeConfig{}} {
		err := secrets.Load(t.Context(), dst)
		if errors.Is(err, kvsecrets.ErrLoadMisuse) || !errors.Is(err, kvsecrets.ErrNotFound) {
			t.Errorf("Load(%T) = %v, want only not-found errors", dst, err)
		}
	}
}

// README, "Rotation": the two sides of a key.

// Keys you issue (partners call you with them): write a new version, expiring in 180 days.
func rotatePartnerKey(ctx context.Context, secrets *kvsecrets.Provider) (string, error) {
	key, err := kvsecrets.GenerateAPIKey(0) // 43 URL-safe characters from crypto/rand
	if err != nil {
		return "", err
	}
	_, err = secrets.Rotate(ctx, "PartnerApiKey", key, nil) // needs "Key Vault Secrets Officer"
	return key, err                                         // hand the new key to the partner
}

// On each request: the presented key, in constant time, against the latest version and the
// versions replaced within the overlap (24h, at most 2), so callers switch at their own pace.
func requirePartnerKey(secrets *kvsecrets.Provider, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := secrets.Verify(r.Context(), "PartnerApiKey", r.Header.Get("X-Api-Key")); err != nil {
			http.Error(w, "unauthorized", http.StatusUnauthorized) // errors.Is(err, kvsecrets.ErrMismatch)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// TestREADMERotation runs the README's two functions: the old key and the
// new one both pass during the overlap, anything else is refused.
func TestREADMERotation(t *testing.T) {
	vault := kvtest.NewTestServer(t, nil)
	vault.SetSecret("PartnerApiKey", "first-partner-key-0123456789", nil)
	secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer secrets.Close()
	h := requirePartnerKey(secrets, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	status := func(key string) int {
		r := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
		r.Header.Set("X-Api-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	if got := status("first-partner-key-0123456789"); got != http.StatusOK {
		t.Fatalf("the current key: %d", got)
	}
	key, err := rotatePartnerKey(t.Context(), secrets)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]int{key: 200, "first-partner-key-0123456789": 200, "a-guess": 401, "": 401} {
		if got := status(k); got != want {
			t.Errorf("after the rotation, key %d characters long: %d, want %d", len(k), got, want)
		}
	}
}

// README, Event Grid.
func readmeEventGrid(secrets *kvsecrets.Provider) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/events", secrets.EventGridHandler(&kvsecrets.EventGridOptions{
		SharedSecret: os.Getenv("EVENTGRID_KEY"), // subscribe https://svc/events?key=...
	}))
	return mux
}

// README, "A fleet behind a load balancer".
func readmeFanOut(ctx context.Context, secrets *kvsecrets.Provider) (*redisfanout.FanOut, error) {
	key, err := secrets.Get(ctx, "FanoutHmacKey") // 32 random bytes or more, base64
	if err != nil {
		return nil, err
	}
	hmacKey, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("REDIS_ADDR")})
	fan, err := redisfanout.New(secrets, rdb, &redisfanout.Options{Key: hmacKey})
	if err != nil {
		return nil, err
	}
	// At shutdown: fan.Close(), then rdb.Close() and secrets.Close().
	return fan, nil
}

// README, "A fleet restarting at once".
func readmeLimiter(vaultURL string, cred azcore.TokenCredential) (*kvsecrets.Provider, error) {
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("REDIS_ADDR"), ContextTimeoutEnabled: true})
	limiter, err := redisfanout.NewLimiter(rdb, &redisfanout.LimiterOptions{Limit: 3600, Window: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	return kvsecrets.NewProvider(vaultURL, cred, &kvsecrets.Options{Limiter: limiter})
}

var _ = readmeFanOut
var _ = readmeLimiter
var _ = readmeEventGrid
var _ = readmeLoad
var _ = docPackage

// README, "Errors", run against a disabled secret.
func Example_errors() {
	vault, verr := kvtest.NewServer(nil)
	if verr != nil {
		panic(verr)
	}
	defer vault.Close()
	vault.SetSecret("MyApiKey", "disabled-value", nil)
	vault.SetEnabled("MyApiKey", "", false)
	p, perr := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if perr != nil {
		panic(perr)
	}
	defer p.Close()
	ctx := context.Background()

	_, err := p.Get(ctx, "MyApiKey")
	fmt.Println(errors.Is(err, kvsecrets.ErrDisabled)) // true for a disabled secret
	var re *azcore.ResponseError
	fmt.Println(errors.As(err, &re), re.StatusCode) // true 403
	fmt.Println(err)                                // kvsecrets: secret "MyApiKey": secret disabled (403 Forbidden/SecretDisabled)
	// Output:
	// true
	// true 403
	// kvsecrets: secret "MyApiKey": secret disabled (403 Forbidden/SecretDisabled)
}

// checkout stands for the user's own package in the README's TestCheckout.
var checkout checkoutPackage

type checkoutPackage struct{}

func (checkoutPackage) New(secrets *kvsecrets.Provider) *checkoutService {
	return &checkoutService{secrets: secrets}
}

type checkoutService struct{ secrets *kvsecrets.Provider }

func (s *checkoutService) Charge(ctx context.Context, cents int) error {
	key, err := s.secrets.Get(ctx, "StripeKey")
	if err != nil {
		return err
	}
	if key == "" || cents <= 0 {
		return errors.New("checkout: nothing to charge")
	}
	return nil
}

// README, "Testing your service".
func TestCheckout(t *testing.T) {
	vault := kvtest.NewTestServer(t, nil)
	vault.SetSecret("StripeKey", "sk_test_123", nil)

	secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
		&kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer secrets.Close()

	svc := checkout.New(secrets) // your code, reading secrets.Get(ctx, "StripeKey")
	if err := svc.Charge(t.Context(), 1000); err != nil {
		t.Fatal(err)
	}

	// Then the failures your service must survive:
	vault.FailFor(time.Minute, kvtest.ServiceUnavailable) // an outage
	vault.FailSecret("StripeKey", kvtest.ForbiddenByRbac) // a revoked role
	vault.SetEnabled("StripeKey", "", false)              // a disabled secret
	vault.SetLatency(200 * time.Millisecond)              // a slow vault
	vault.SetThrottle(4000, 10*time.Second)               // Key Vault's throttle
}

// README, "Hours of vault life in milliseconds".
func TestServesThroughAnOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		vault.SetSecret("StripeKey", "sk_test_123", nil)
		secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
			&kvsecrets.Options{ClientOptions: vault.ClientOptions()})
		if err != nil {
			t.Fatal(err)
		}
		defer secrets.Close()
		if _, err := secrets.Get(t.Context(), "StripeKey"); err != nil {
			t.Fatal(err)
		}

		vault.FailFor(48*time.Hour, kvtest.ServiceUnavailable) // Key Vault is down for two days
		time.Sleep(20 * time.Hour)                             // on the bubble's clock: instant
		if _, err := secrets.Get(t.Context(), "StripeKey"); err != nil {
			t.Fatalf("within MaxStale (24h) the cached value is served: %v", err)
		}
		time.Sleep(5 * time.Hour)
		if _, err := secrets.Get(t.Context(), "StripeKey"); !errors.Is(err, kvsecrets.ErrUnavailable) {
			t.Fatalf("past MaxStale: %v, want ErrUnavailable", err)
		}
	})
}

// README, "Rotations pushed by Event Grid".
func TestRotationArrivesByEventGrid(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer vault.Close() // ends its event deliveries
		vault.SetSecret("StripeKey", "sk_test_1", nil)
		secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
			&kvsecrets.Options{ClientOptions: vault.ClientOptions(), TTL: 8 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		defer secrets.Close()
		if _, err := secrets.Get(t.Context(), "StripeKey"); err != nil {
			t.Fatal(err)
		}

		// Your service's webhook, subscribed to the vault's events as Event
		// Grid subscribes it: the validation handshake first.
		webhook := secrets.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: "s3cret"})
		if _, err := vault.SubscribeHandler("/events?key=s3cret", webhook, nil); err != nil {
			t.Fatal(err)
		}

		vault.SetSecret("StripeKey", "sk_test_2", nil) // the rotation
		synctest.Wait()                                // its delivery, and the refresh that starts
		if key, _ := secrets.Get(t.Context(), "StripeKey"); key != "sk_test_2" {
			t.Fatalf("after the event, Get serves %q; its TTL would have kept the old key for hours", key)
		}
	})
}

// kvtest's package doc (kvtest/server.go).
func TestKvtestPackageDoc(t *testing.T) {
	srv := kvtest.NewTestServer(t, nil)
	srv.SetSecret("MyApiKey", "test-key", nil)
	p, err := kvsecrets.NewProvider(srv.URL(), srv.Credential(),
		&kvsecrets.Options{ClientOptions: srv.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if v, err := p.Get(t.Context(), "MyApiKey"); v != "test-key" || err != nil {
		t.Fatalf("Get: %d characters, %v", len(v), err)
	}
}

// README, "Live secrets".
type Config struct {
	StripeKey string      `keyvault:"StripeKey"`
	Cache     CacheConfig // untagged structs are walked
}

func charge(ctx context.Context, key string, cache CacheConfig) { _, _, _ = ctx, key, cache }

func serveLive(ctx context.Context, secrets *kvsecrets.Provider) error {
	// A handle per secret, made once: each Get is an atomic load and a check.
	stripeKey, err := secrets.Handle("StripeKey")
	if err != nil {
		return err // an invalid name; no request is made
	}

	// A configuration that follows rotations: rebuilt and swapped when any
	// secret in it gets a new version; a rebuild that fails keeps the last.
	live, err := kvsecrets.LoadLive[Config](ctx, secrets, &kvsecrets.LiveOptions[Config]{
		OnError: func(err error) { log.Printf("config not rebuilt: %v", err) }, // names, never values
	})
	if err != nil {
		return err
	}
	defer live.Close()

	// Each new version of one secret, as it is served.
	go func() {
		for s, err := range secrets.Watch(ctx, "SigningKey") {
			if err != nil {
				log.Printf("SigningKey not served: %v", err) // revoked, or past MaxStale
				continue
			}
			log.Printf("SigningKey is now version %s", s.Version)
		}
	}()

	mux := http.NewServeMux()
	mux.Handle("/ready", secrets.HealthHandler("StripeKey", "SigningKey")) // 200 or 503, JSON states
	mux.HandleFunc("/charge", func(w http.ResponseWriter, r *http.Request) {
		key, err := stripeKey.Get(r.Context())
		if err != nil {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		charge(r.Context(), key, live.Current().Cache) // this request's snapshot
	})
	return http.ListenAndServe(":8080", mux)
}

var _ = serveLive

type stripeClient struct{ key string }

func (c *stripeClient) SetKey(key string) { c.key = key }

// Watch's doc (watch.go).
func docWatch(ctx context.Context, secrets *kvsecrets.Provider, client *stripeClient) {
	for s, err := range secrets.Watch(ctx, "StripeKey") {
		if err != nil {
			log.Printf("StripeKey is not served: %v", err) // revoked, or past MaxStale
			continue
		}
		client.SetKey(s.Value())
	}
}

// LoadLive's doc (live.go).
func docLoadLive(ctx context.Context, secrets *kvsecrets.Provider) *Config {
	live, err := kvsecrets.LoadLive[Config](ctx, secrets, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer live.Close()
	cfg := live.Current() // on each request: an atomic load
	return cfg
}

// TestREADMELive runs the doc comments' code on the local vault.
func TestREADMELive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer vault.Close()
		vault.SetSecret("StripeKey", "sk_test_1", nil)
		vault.SetSecret("CachePassword", "pw", nil)
		secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
			&kvsecrets.Options{ClientOptions: vault.ClientOptions()})
		if err != nil {
			t.Fatal(err)
		}
		defer secrets.Close()
		if cfg := docLoadLive(t.Context(), secrets); cfg.StripeKey != "sk_test_1" || cfg.Cache.Password != "pw" {
			t.Fatalf("%+v", cfg)
		}
		ctx, cancel := context.WithCancel(t.Context())
		client := &stripeClient{}
		done := make(chan struct{})
		go func() { docWatch(ctx, secrets, client); close(done) }()
		synctest.Wait()
		vault.SetSecret("StripeKey", "sk_test_2", nil)
		secrets.Refresh(ctx, "StripeKey")
		synctest.Wait()
		if client.key != "sk_test_2" {
			t.Fatalf("the watch set %q", client.key)
		}
		cancel()
		<-done
	})
}
