package kvsecrets_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets/fake"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// fakeVault returns client options that answer GetSecret from a map through
// the SDK's own fake transport: how an application's tests can run a
// Provider without Azure. Versions are "v1", "v2", … as values are added.
func fakeVault(values map[string][]string, reads *atomic.Int64) *azsecrets.ClientOptions {
	srv := fake.Server{
		GetSecret: func(_ context.Context, name, version string, _ *azsecrets.GetSecretOptions) (resp azfake.Responder[azsecrets.GetSecretResponse], errResp azfake.ErrorResponder) {
			if reads != nil {
				reads.Add(1)
			}
			vals := values[name]
			if len(vals) == 0 {
				errResp.SetResponseError(http.StatusNotFound, "SecretNotFound")
				return
			}
			n := len(vals)
			if version != "" {
				fmt.Sscanf(version, "v%d", &n)
			}
			id := azsecrets.ID(fmt.Sprintf("https://myvault.vault.azure.net/secrets/%s/v%d", name, n))
			exp := time.Date(2031, 5, 1, 0, 0, 0, 0, time.UTC)
			resp.SetResponse(http.StatusOK, azsecrets.GetSecretResponse{Secret: azsecrets.Secret{
				ID: &id, Value: to.Ptr(vals[n-1]), ContentType: to.Ptr("text/plain"),
				Attributes: &azsecrets.SecretAttributes{Enabled: to.Ptr(true), Expires: &exp},
			}}, nil)
			return
		},
	}
	return &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: fake.NewServerTransport(&srv)}}
}

func Example() {
	// In production: kvsecrets.NewProvider("https://myvault.vault.azure.net/", nil, nil)
	// uses DefaultAzureCredential. Here the SDK's fake transport stands in for the vault.
	var reads atomic.Int64
	opts := &kvsecrets.Options{ClientOptions: fakeVault(map[string][]string{"MyApiKey": {"k-123"}}, &reads)}
	p, err := kvsecrets.NewProvider("https://myvault.vault.azure.net/", &azfake.TokenCredential{}, opts)
	if err != nil {
		panic(err)
	}
	defer p.Close()

	ctx := context.Background()
	for range 1000 {
		key, err := p.Get(ctx, "MyApiKey") // the first call reads the vault; the rest, memory
		if err != nil {
			panic(err)
		}
		_ = key
	}
	fmt.Println("vault reads:", reads.Load())
	fmt.Println("hits:", p.Stats().Hits)
	// Output:
	// vault reads: 1
	// hits: 999
}

func ExampleProvider_GetSecret() {
	opts := &kvsecrets.Options{ClientOptions: fakeVault(map[string][]string{"MyApiKey": {"k-123"}}, nil)}
	p, _ := kvsecrets.NewProvider("https://myvault.vault.azure.net/", &azfake.TokenCredential{}, opts)
	defer p.Close()

	s, err := p.GetSecret(context.Background(), "MyApiKey")
	if err != nil {
		panic(err)
	}
	fmt.Println(s.Name, s.Version, s.ContentType, s.Expires.Format(time.DateOnly))
	fmt.Println(len(s.Value()), "bytes of value")
	// Output:
	// MyApiKey v1 text/plain 2031-05-01
	// 5 bytes of value
}

func ExampleSecret_String() {
	opts := &kvsecrets.Options{ClientOptions: fakeVault(map[string][]string{"MyApiKey": {"k-123"}}, nil)}
	p, _ := kvsecrets.NewProvider("https://myvault.vault.azure.net/", &azfake.TokenCredential{}, opts)
	defer p.Close()

	s, _ := p.GetSecret(context.Background(), "MyApiKey")
	// Printing, logging or marshalling a Secret never shows the value.
	fmt.Println(s)
	fmt.Printf("%#v\n", s)
	// Output:
	// kvsecrets.Secret{Name: "MyApiKey", Version: "v1", ContentType: "text/plain", Expires: 2031-05-01T00:00:00Z, Value: [REDACTED]}
	// kvsecrets.Secret{Name: "MyApiKey", Version: "v1", ContentType: "text/plain", Expires: 2031-05-01T00:00:00Z, Value: [REDACTED]}
}

func ExampleProvider_Preload() {
	opts := &kvsecrets.Options{ClientOptions: fakeVault(map[string][]string{
		"StripeKey": {"sk"}, "MapsKey": {"mk"},
	}, nil)}
	p, _ := kvsecrets.NewProvider("https://myvault.vault.azure.net/", &azfake.TokenCredential{}, opts)
	defer p.Close()

	// At start-up: read every key in parallel and fail fast, naming each
	// missing secret.
	err := p.Preload(context.Background(), "StripeKey", "MapsKey", "SendGridKey")
	fmt.Println(err)
	fmt.Println(errors.Is(err, kvsecrets.ErrNotFound))
	// Output:
	// kvsecrets: secret "SendGridKey": secret not found (404 SecretNotFound)
	// true
}

func ExampleProvider_Refresh() {
	values := map[string][]string{"MyApiKey": {"old-key"}}
	opts := &kvsecrets.Options{
		ClientOptions: fakeVault(values, nil),
		OnRotate: func(ev kvsecrets.RotationEvent) {
			fmt.Printf("rotated %s: %s -> %s\n", ev.Name, ev.OldVersion, ev.NewVersion)
		},
	}
	p, _ := kvsecrets.NewProvider("https://myvault.vault.azure.net/", &azfake.TokenCredential{}, opts)
	defer p.Close()
	ctx := context.Background()

	key, _ := p.Get(ctx, "MyApiKey")
	fmt.Println(key)
	values["MyApiKey"] = append(values["MyApiKey"], "new-key") // a new version in the vault
	if _, err := p.Refresh(ctx, "MyApiKey"); err != nil {      // normally the background refresh does this
		panic(err)
	}
	key, _ = p.Get(ctx, "MyApiKey")
	fmt.Println(key)
	// Output:
	// old-key
	// rotated MyApiKey: v1 -> v2
	// new-key
}

func ExampleProvider_GetVersion() {
	opts := &kvsecrets.Options{ClientOptions: fakeVault(map[string][]string{"MyApiKey": {"first", "second"}}, nil)}
	p, _ := kvsecrets.NewProvider("https://myvault.vault.azure.net/", &azfake.TokenCredential{}, opts)
	defer p.Close()

	s, _ := p.GetVersion(context.Background(), "MyApiKey", "v1")
	fmt.Println(s.Version, s.Value())
	_, err := p.GetVersion(context.Background(), "MyApiKey", "not/a/version")
	fmt.Println(errors.Is(err, kvsecrets.ErrInvalidVersion), strings.HasPrefix(err.Error(), "kvsecrets: invalid secret version"))
	// Output:
	// v1 first
	// true true
}

func ExampleProvider_Rotate() {
	vault, err := kvtest.NewServer(nil) // a local Key Vault; in tests, kvtest.NewTestServer(t, nil)
	if err != nil {
		panic(err)
	}
	defer vault.Close()
	vault.SetSecret("PartnerApiKey", "old-key-issued-last-year", nil)
	p, _ := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	defer p.Close()
	ctx := context.Background()

	newKey, _ := kvsecrets.GenerateAPIKey(0)
	s, err := p.Rotate(ctx, "PartnerApiKey", newKey, nil) // expires in 180 days
	if err != nil {
		panic(err)
	}
	fmt.Println(int(time.Until(s.Expires).Hours()/24+0.5), "days")

	// Through the overlap (24h by default), both keys are accepted.
	_, errOld := p.Verify(ctx, "PartnerApiKey", "old-key-issued-last-year")
	_, errNew := p.Verify(ctx, "PartnerApiKey", newKey)
	_, errBad := p.Verify(ctx, "PartnerApiKey", "guess")
	fmt.Println(errOld == nil, errNew == nil, errors.Is(errBad, kvsecrets.ErrMismatch))
	// Output:
	// 180 days
	// true true true
}

func ExampleProvider_EventGridHandler() {
	vault, err := kvtest.NewServer(&kvtest.Options{VaultName: "sample-kv"})
	if err != nil {
		panic(err)
	}
	defer vault.Close()
	vault.SetSecret("newsecret", "v1", nil)
	rotated := make(chan struct{}, 1)
	p, _ := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{
		ClientOptions: vault.ClientOptions(),
		OnRotate:      func(kvsecrets.RotationEvent) { rotated <- struct{}{} },
	})
	defer p.Close()
	p.Get(context.Background(), "newsecret")

	// Serve it at the URL of an Event Grid subscription to the vault's events:
	// https://your-service/events?key=SHARED-SECRET
	h := p.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: "SHARED-SECRET"})

	vault.SetSecret("newsecret", "v2", nil) // rotated elsewhere
	event := `{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10"}}`
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", "/events?key=SHARED-SECRET", strings.NewReader(event)))
	fmt.Println(w.Code)

	select { // the refresh runs in the background
	case <-rotated:
	case <-time.After(10 * time.Second):
		fmt.Println("no refresh")
	}
	v, _ := p.Get(context.Background(), "newsecret")
	fmt.Println(v)
	// Output:
	// 200
	// v2
}

// Any transport can feed a Provider news of a new version: a message
// engine that fans one webhook delivery out to every instance, a queue, a
// script. The notice carries no value; the Provider re-reads the vault.
func ExampleProvider_Notify() {
	vault, err := kvtest.NewServer(nil)
	if err != nil {
		panic(err)
	}
	defer vault.Close()
	vault.SetSecret("MyApiKey", "key-1", nil)
	rotated := make(chan struct{}, 1)
	p, _ := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	defer p.Close()
	p.AddOnRotate(func(kvsecrets.RotationEvent) { rotated <- struct{}{} })
	p.Get(context.Background(), "MyApiKey")

	version, _ := vault.SetSecret("MyApiKey", "key-2", nil) // rotated elsewhere
	// What a message from another instance says: {vault host, name, version}.
	acted, err := p.Notify(kvsecrets.Notice{Vault: "kvtest.vault.azure.net", Name: "MyApiKey", Version: version})
	fmt.Println(acted, err)
	<-rotated // the refresh runs in the background
	v, _ := p.Get(context.Background(), "MyApiKey")
	fmt.Println(v)

	// The same notice again is no news: that version is served already.
	acted, _ = p.Notify(kvsecrets.Notice{Name: "MyApiKey", Version: version})
	fmt.Println(acted)
	// Output:
	// true <nil>
	// key-2
	// false
}

func ExampleProvider_Load() {
	vault, err := kvtest.NewServer(nil)
	if err != nil {
		panic(err)
	}
	defer vault.Close()
	vault.Seed(map[string]string{"StripeKey": "sk_test_1", "DatabaseConfig": `{"host":"db.internal","port":5432}`})
	p, _ := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	defer p.Close()

	var cfg struct {
		StripeKey string `keyvault:"StripeKey"`
		Database  struct {
			Host string `json:"host"`
			Port int    `json:"port"`
		} `keyvault:"DatabaseConfig,json"`
		SentryDSN string `keyvault:"SentryDsn,optional"`
	}
	if err := p.Load(context.Background(), &cfg); err != nil {
		panic(err)
	}
	fmt.Println(cfg.Database.Host, cfg.Database.Port, len(cfg.StripeKey), cfg.SentryDSN == "")

	var missing struct {
		SendGridKey string `keyvault:"SendGridKey"`
	}
	fmt.Println(p.Load(context.Background(), &missing))
	// Output:
	// db.internal 5432 9 true
	// field dst.SendGridKey (secret "SendGridKey" in vault kvtest.vault.azure.net): kvsecrets: secret "SendGridKey": secret not found (404 SecretNotFound)
}

func ExampleProvider_Resolve() {
	vault, err := kvtest.NewServer(nil) // vault URL https://kvtest.vault.azure.net/
	if err != nil {
		panic(err)
	}
	defer vault.Close()
	vault.Seed(map[string]string{"MyApiKey": "k-1"})
	p, _ := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	defer p.Close()
	ctx := context.Background()

	for _, ref := range []string{
		"MyApiKey",
		"https://kvtest.vault.azure.net/secrets/MyApiKey",
		"@Microsoft.KeyVault(SecretUri=https://kvtest.vault.azure.net/secrets/MyApiKey/)",
		"@Microsoft.KeyVault(VaultName=kvtest;SecretName=MyApiKey)",
	} {
		v, err := p.Resolve(ctx, ref)
		fmt.Println(v, err)
	}
	_, err = p.Resolve(ctx, "https://attacker.example/secrets/MyApiKey")
	fmt.Println(errors.Is(err, kvsecrets.ErrHostNotAllowed))
	// Output:
	// k-1 <nil>
	// k-1 <nil>
	// k-1 <nil>
	// k-1 <nil>
	// true
}
