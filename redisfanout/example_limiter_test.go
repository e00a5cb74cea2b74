package redisfanout_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// Every instance of a fleet sets the same Limiter options on its
// Provider, so that together they stay within the vault's budget.
func ExampleNewLimiter() {
	ctx := context.Background()
	// Production uses the fleet's Redis; miniredis stands in for it here.
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	vault, err := kvtest.NewServer(nil) // a local Key Vault
	if err != nil {
		log.Fatal(err)
	}
	defer vault.Close()
	if err := vault.Seed(map[string]string{"ApiKey": "key-1", "DbPassword": "pw-1"}); err != nil {
		log.Fatal(err)
	}

	// ContextTimeoutEnabled lets LimiterOptions.Timeout bound each call.
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	limiter, err := redisfanout.NewLimiter(rdb, &redisfanout.LimiterOptions{
		Limit:  3000, // of Key Vault's 4,000 per 10 s: other applications read this vault too
		Window: 10 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
		&kvsecrets.Options{ClientOptions: vault.ClientOptions(), Limiter: limiter})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	if err := p.Preload(ctx, "ApiKey", "DbPassword"); err != nil {
		log.Fatal(err)
	}
	key, err := p.Get(ctx, "ApiKey")
	fmt.Println("ApiKey:", key, err)
	// 3 turns for 2 reads: the first meets the vault's authentication
	// challenge, two requests for one.
	fmt.Println("turns granted:", limiter.Status().Granted, p.Stats().LimitedReads)
	fmt.Println("Redis keys:", mr.Keys())
	// Output:
	// ApiKey: key-1 <nil>
	// turns granted: 3 3
	// Redis keys: [kvsecrets:limit:kvtest.vault.azure.net]
}
