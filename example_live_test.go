package kvsecrets_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// localVault returns a Provider on kvtest's in-process vault, seeded with
// values, for the examples that rotate secrets.
func localVault(values map[string]string) (*kvtest.Server, *kvsecrets.Provider) {
	vault, err := kvtest.NewInProcess(nil)
	if err != nil {
		panic(err)
	}
	for name, v := range values {
		if _, err := vault.SetSecret(name, v, nil); err != nil {
			panic(err)
		}
	}
	p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
		&kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if err != nil {
		panic(err)
	}
	return vault, p
}

func ExampleProvider_Handle() {
	vault, p := localVault(map[string]string{"StripeKey": "sk_test_1"})
	defer vault.Close()
	defer p.Close()

	// At start-up: the name is checked once; no request yet.
	stripeKey, err := p.Handle("StripeKey")
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for range 1000 {
		key, err := stripeKey.Get(ctx) // the first reads the vault; the rest, an atomic load
		if err != nil {
			panic(err)
		}
		_ = key
	}
	fmt.Println("vault reads:", vault.SecretRequests("StripeKey"), "hits:", p.Stats().Hits)
	fmt.Println(stripeKey)
	// Output:
	// vault reads: 1 hits: 999
	// kvsecrets.Handle{Name: "StripeKey"}
}

func ExampleProvider_Watch() {
	vault, p := localVault(map[string]string{"StripeKey": "sk_test_1"})
	defer vault.Close()
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())

	served := make(chan string)
	go func() {
		defer close(served)
		for s, err := range p.Watch(ctx, "StripeKey") {
			if err != nil {
				served <- "not served: " + err.Error()
				continue
			}
			served <- s.Value()
		}
	}()
	fmt.Println(<-served) // the current version first

	vault.SetSecret("StripeKey", "sk_test_2", nil)
	p.Refresh(ctx, "StripeKey") // or a background refresh, an event, Notify, Rotate
	fmt.Println(<-served)

	vault.SetEnabled("StripeKey", "", false)
	p.Refresh(ctx, "StripeKey")
	fmt.Println(<-served)

	cancel()
	_, open := <-served
	fmt.Println("watching:", open)
	// Output:
	// sk_test_1
	// sk_test_2
	// not served: kvsecrets: secret "StripeKey": secret disabled (403 Forbidden/SecretDisabled)
	// watching: false
}

func ExampleLoadLive() {
	type Config struct {
		StripeKey string `keyvault:"StripeKey"`
		DB        struct {
			Host string `json:"host"`
		} `keyvault:"DatabaseConfig,json"`
	}
	vault, p := localVault(map[string]string{"StripeKey": "sk_test_1", "DatabaseConfig": `{"host":"db1"}`})
	defer vault.Close()
	defer p.Close()
	ctx := context.Background()

	changed := make(chan *Config, 1)
	failed := make(chan error, 1)
	live, err := kvsecrets.LoadLive(ctx, p, &kvsecrets.LiveOptions[Config]{
		OnChange: func(old, new *Config) { changed <- new },
		OnError:  func(err error) { failed <- err },
	})
	if err != nil {
		panic(err)
	}
	defer live.Close()
	fmt.Println(live.Current().StripeKey, live.Current().DB.Host)

	vault.SetSecret("DatabaseConfig", `{"host":"db2"}`, nil)
	p.Refresh(ctx, "DatabaseConfig")
	<-changed
	fmt.Println(live.Current().StripeKey, live.Current().DB.Host)

	// A value that does not decode: the previous snapshot stays current.
	vault.SetSecret("DatabaseConfig", `{"host":`, nil)
	p.Refresh(ctx, "DatabaseConfig")
	fmt.Println(<-failed)
	fmt.Println(live.Current().DB.Host)
	// Output:
	// sk_test_1 db1
	// sk_test_1 db2
	// field Config.DB (secret "DatabaseConfig"): the secret is not valid JSON (at byte 8) (the decoder's message is withheld: it may quote the value)
	// db2
}

func ExampleProvider_HealthHandler() {
	vault, p := localVault(map[string]string{"StripeKey": "sk_test_1", "MapsKey": "mk_1"})
	defer vault.Close()
	defer p.Close()
	if err := p.Preload(context.Background(), "StripeKey", "MapsKey"); err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ready", p.HealthHandler("StripeKey", "MapsKey"))

	probe := func() {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
		var body struct {
			Ready   bool
			Secrets []struct{ Name, State, Error string }
		}
		json.Unmarshal(rec.Body.Bytes(), &body)
		var states []string
		for _, s := range body.Secrets {
			states = append(states, strings.TrimSpace(s.Name+" "+s.State+" "+s.Error))
		}
		fmt.Println(rec.Code, body.Ready, strings.Join(states, ", "))
	}
	probe()
	vault.FailSecret("MapsKey", kvtest.ForbiddenByRbac) // the role was revoked
	p.Refresh(context.Background(), "MapsKey")
	probe()
	// Output:
	// 200 true StripeKey fresh, MapsKey fresh
	// 503 false StripeKey fresh, MapsKey failing forbidden
}
