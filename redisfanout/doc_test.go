package redisfanout_test

import (
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// deploy is the package documentation's deployment, compiled (see
// TestDocCodeIsCompiled in the root package).
func deploy(secrets *kvsecrets.Provider, mux *http.ServeMux, fanoutKey []byte, egKey string) error {
	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
	fan, err := redisfanout.New(secrets, rdb, &redisfanout.Options{Key: fanoutKey})
	if err != nil {
		return err
	}
	defer fan.Close() // before secrets.Close
	mux.Handle("/events", secrets.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: egKey}))
	return nil
}

var _ = deploy

// limitFleet is the package documentation's Limiter, compiled.
func limitFleet(vaultURL string, cred azcore.TokenCredential) error {
	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379", ContextTimeoutEnabled: true})
	limiter, err := redisfanout.NewLimiter(rdb, &redisfanout.LimiterOptions{Limit: 3000, Window: 10 * time.Second})
	if err != nil {
		return err
	}
	secrets, err := kvsecrets.NewProvider(vaultURL, cred, &kvsecrets.Options{Limiter: limiter})
	if err != nil {
		return err
	}
	return secrets.Close()
}

var _ = limitFleet
