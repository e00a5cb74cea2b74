package hostile_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

func client(t *testing.T, s *kvtest.Server) *azsecrets.Client {
	c, err := azsecrets.NewClient(s.URL(), s.Credential(), s.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ptr[T any](v T) *T { return &v }

func TestHostileBackupRevealsNothing(t *testing.T) {
	s := kvtest.NewTestServer(t, &kvtest.Options{VaultName: "vaultnameqq"})
	ctx := context.Background()
	c := client(t, s)
	name := "SuperSecretNameXYZ"
	value := "hunter2-very-secret-value-ABCDEF"
	ver, _ := s.SetSecret(name, value, &kvtest.SecretOptions{ContentType: "text/plainish-CT", Tags: map[string]string{"tagkeyQQ": "tagvalZZ"}, Expires: time.Now().Add(48 * time.Hour)})
	s.SetSecret(name, value+"-2", nil)
	b1, err := c.BackupSecret(ctx, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := c.BackupSecret(ctx, name, nil)
	if bytes.Equal(b1.Value, b2.Value) {
		t.Errorf("two backups of the same secret are byte-identical: deterministic encryption (nonce reuse?)")
	}
	blobs := [][]byte{b1.Value}
	// also the raw wire text, and decodings
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if d, err := enc.DecodeString(string(b1.Value)); err == nil {
			blobs = append(blobs, d)
		}
	}
	needles := []string{name, strings.ToLower(name), value, "hunter2", "text/plainish-CT", "tagkeyQQ", "tagvalZZ", ver, s.Host(), "vaultnameqq"}
	for _, b := range blobs {
		for _, n := range needles {
			for _, form := range []string{n, base64.StdEncoding.EncodeToString([]byte(n)), hex.EncodeToString([]byte(n))} {
				if bytes.Contains(bytes.ToLower(b), bytes.ToLower([]byte(form))) {
					t.Errorf("blob reveals %q (as %q)", n, form)
				}
			}
		}
	}
	t.Logf("blob %d bytes; first 32: %q", len(b1.Value), b1.Value[:min(32, len(b1.Value))])
}

func restoreErr(t *testing.T, s *kvtest.Server, blob []byte) error {
	_, err := client(t, s).RestoreSecret(context.Background(), azsecrets.RestoreSecretParameters{SecretBackup: blob}, nil)
	return err
}

func TestHostileBackupOnlyRestoresIntoItsServer(t *testing.T) {
	ctx := context.Background()
	a := kvtest.NewTestServer(t, nil)
	b := kvtest.NewTestServer(t, nil) // same vault name, same defaults
	ip := mustInProcess(t, nil)
	defer ip.Close()
	a.SetSecret("S", "v", nil)
	blob, err := client(t, a).BackupSecret(ctx, "S", nil)
	if err != nil {
		t.Fatal(err)
	}
	for what, s := range map[string]*kvtest.Server{"twin server": b, "in-process": ip} {
		err := restoreErr(t, s, blob.Value)
		var re *azcore.ResponseError
		if err == nil {
			t.Errorf("%s restored a foreign blob", what)
		} else if !errorsAs(err, &re) || re.StatusCode != 400 || re.ErrorCode != "BadParameter" {
			t.Errorf("%s: %v", what, err)
		}
	}
	// Restore into the same server while the secret exists: Key Vault says 409.
	err = restoreErr(t, a, blob.Value)
	var re *azcore.ResponseError
	if err == nil || !errorsAs(err, &re) || re.StatusCode != 409 {
		t.Errorf("restore over an existing secret: %v, want 409 Conflict", err)
	}
	// tampering: truncation, extension, empty, not base64
	mut := map[string][]byte{
		"truncated": blob.Value[:len(blob.Value)-1],
		"extended":  append(append([]byte{}, blob.Value...), 'A'),
		"empty":     {},
		"one byte":  {0},
		"half":      blob.Value[:len(blob.Value)/2],
		"doubled":   append(append([]byte{}, blob.Value...), blob.Value...),
	}
	for what, m := range mut {
		err := restoreErr(t, a, m)
		if err == nil || !errorsAs(err, &re) || re.StatusCode != 400 {
			t.Errorf("%s blob: %v, want 400", what, err)
		}
	}
	// raw bodies the SDK would not send
	tok, _ := a.IssueToken()
	for _, body := range []string{`{}`, `{"value":null}`, `{"value":"!!!"}`, `{"value":""}`, `{"value":123}`, `[]`} {
		st, rb, _ := raw(t, a, "POST", "/secrets/restore?api-version=7.4", tok, []byte(body), nil)
		if st != 400 || !json.Valid(rb) {
			t.Errorf("restore %s: %d %s", body, st, rb)
		}
	}
	// Delete + purge, then restore works.
	c := client(t, a)
	if _, err := c.DeleteSecret(ctx, "S", nil); err != nil {
		t.Fatal(err)
	}
	// while soft-deleted, Key Vault refuses restore with 409
	if err := restoreErr(t, a, blob.Value); err == nil {
		t.Errorf("restore while soft-deleted succeeded; Key Vault answers 409")
	}
	if _, err := c.PurgeDeletedSecret(ctx, "S", nil); err != nil {
		t.Fatal(err)
	}
	if err := restoreErr(t, a, blob.Value); err != nil {
		t.Errorf("restore after purge: %v", err)
	}
	r, err := c.GetSecret(ctx, "S", "", nil)
	if err != nil || *r.Value != "v" {
		t.Errorf("after restore: %v", err)
	}
}

// A blob of secret X taken from server A restores into A under X only; a
// blob cut-and-pasted from two blobs (splice) must be refused.
func TestHostileBackupSplice(t *testing.T) {
	ctx := context.Background()
	a := kvtest.NewTestServer(t, nil)
	a.SetSecret("X", "x", nil)
	a.SetSecret("Y", "y", nil)
	c := client(t, a)
	bx, _ := c.BackupSecret(ctx, "X", nil)
	by, _ := c.BackupSecret(ctx, "Y", nil)
	n := min(len(bx.Value), len(by.Value))
	for cut := 1; cut < n; cut += max(1, n/40) {
		sp := append(append([]byte{}, bx.Value[:cut]...), by.Value[cut:]...)
		if bytes.Equal(sp, bx.Value) || bytes.Equal(sp, by.Value) {
			continue
		}
		c.DeleteSecret(ctx, "X", nil)
		c.PurgeDeletedSecret(ctx, "X", nil)
		c.DeleteSecret(ctx, "Y", nil)
		c.PurgeDeletedSecret(ctx, "Y", nil)
		if err := restoreErr(t, a, sp); err == nil {
			t.Fatalf("spliced blob (cut %d) restored", cut)
		}
	}
}
