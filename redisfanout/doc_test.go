package redisfanout_test

import (
	"net/http"

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
