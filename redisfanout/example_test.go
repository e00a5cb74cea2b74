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

// Two instances of a service share a Redis: a rotation one of them
// learns of reaches the other, which reads the new value from the vault.
func Example() {
	ctx := context.Background()
	// Production uses a real Redis shared by the fleet (Azure Cache for
	// Redis, say); miniredis, an in-process Redis, stands in for it here.
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
	if _, err := vault.SetSecret("ApiKey", "key-1", nil); err != nil {
		log.Fatal(err)
	}
	// The fleet's shared HMAC key: 32 random bytes or more, kept as the
	// service keeps its other secrets.
	fanoutKey := []byte("example key: use 32 random bytes")

	start := func() (*kvsecrets.Provider, *redisfanout.FanOut, func()) {
		p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
			&kvsecrets.Options{ClientOptions: vault.ClientOptions(), TTL: 24 * time.Hour})
		if err != nil {
			log.Fatal(err)
		}
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		fan, err := redisfanout.New(p, rdb, &redisfanout.Options{Key: fanoutKey})
		if err != nil {
			log.Fatal(err)
		}
		if err := fan.WaitConnected(ctx); err != nil {
			log.Fatal(err)
		}
		if _, err := p.Get(ctx, "ApiKey"); err != nil {
			log.Fatal(err)
		}
		return p, fan, func() { fan.Close(); rdb.Close(); p.Close() }
	}
	a, _, stopA := start()
	defer stopA()
	b, _, stopB := start()
	defer stopB()
	rotated := make(chan string, 1)
	b.AddOnRotate(func(ev kvsecrets.RotationEvent) { rotated <- ev.NewVersion })

	// The key is rotated, and instance A hears of it: here by Refresh, in
	// production from the Event Grid webhook behind the load balancer.
	version, err := vault.SetSecret("ApiKey", "key-2", nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := a.Refresh(ctx, "ApiKey"); err != nil {
		log.Fatal(err)
	}
	select {
	case v := <-rotated:
		fmt.Println("instance B saw the new version:", v == version)
	case <-time.After(10 * time.Second):
		fmt.Println("instance B did not hear of the rotation")
	}
	key, err := b.Get(ctx, "ApiKey")
	fmt.Println("instance B serves:", key, err)
	// Output:
	// instance B saw the new version: true
	// instance B serves: key-2 <nil>
}
