// Command rotation shows an API key rotated with a 180-day expiry while
// clients holding the old key keep working through the overlap.
//
//	go run ./examples/rotation
//
// It runs on a local Key Vault (package kvtest); no Azure account is
// needed. The service issues API keys to a partner and keeps them in Key
// Vault; requests carry the key and the service checks it with Verify.
// Keys are never printed.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "rotation:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	vault, err := kvtest.NewServer(nil)
	if err != nil {
		return err
	}
	defer vault.Close()

	oldKey, err := kvsecrets.GenerateAPIKey(0)
	if err != nil {
		return err
	}
	if _, err := vault.SetSecret("PartnerApiKey", oldKey, nil); err != nil {
		return err
	}
	secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{
		ClientOptions: vault.ClientOptions(),
		// The demo shortens the overlap from a day to two seconds, and the
		// TTL so that the end of the overlap is seen within a second.
		VerifyOverlap: 2 * time.Second,
		TTL:           time.Second,
		OnRotate: func(ev kvsecrets.RotationEvent) {
			fmt.Fprintf(out, "   OnRotate: %s rotated, %s… -> %s…\n", ev.Name, short(ev.OldVersion), short(ev.NewVersion))
		},
	})
	if err != nil {
		return err
	}
	defer secrets.Close()

	check := func(who, key string) {
		s, err := secrets.Verify(ctx, "PartnerApiKey", key)
		switch {
		case err == nil:
			fmt.Fprintf(out, "   %-22s accepted (matches version %s…)\n", who, short(s.Version))
		case errors.Is(err, kvsecrets.ErrMismatch):
			fmt.Fprintf(out, "   %-22s refused: %v\n", who, err)
		default:
			fmt.Fprintf(out, "   %-22s error: %v\n", who, err)
		}
	}

	fmt.Fprintln(out, "1. The partner calls with the key it was issued:")
	check("partner (old key)", oldKey)
	check("attacker (random key)", "not-the-key")

	newKey, err := kvsecrets.GenerateAPIKey(0)
	if err != nil {
		return err
	}
	s, err := secrets.Rotate(ctx, "PartnerApiKey", newKey, nil) // 180 days by default
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n2. Rotated: version %s… expires %s (in %d days)\n", short(s.Version),
		s.Expires.Format(time.DateOnly), int(time.Until(s.Expires).Hours()/24+0.5))

	fmt.Fprintln(out, "\n3. During the overlap both keys work, so the partner can switch at its pace:")
	check("partner (old key)", oldKey)
	check("partner (new key)", newKey)

	fmt.Fprintln(out, "\n4. After the overlap (a day by default; two seconds here) only the new key works:")
	time.Sleep(2 * time.Second)
	// The key set is re-read within a TTL (a second here) of the overlap's end.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err := secrets.Verify(ctx, "PartnerApiKey", oldKey); errors.Is(err, kvsecrets.ErrMismatch) {
			break
		}
	}
	check("partner (old key)", oldKey)
	check("partner (new key)", newKey)

	st := secrets.Stats()
	fmt.Fprintf(out, "\nStats: writes %d, vault reads %d, rotations %d\n", st.Writes, st.VaultRequests, st.Rotations)
	return nil
}

func short(v string) string {
	if len(v) > 8 {
		return v[:8]
	}
	return v
}
