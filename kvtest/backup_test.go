package kvtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

const (
	backupName  = "PaymentsApiKey"
	backupValue = "s3cr3t-value-that-must-not-leak"
)

// backupFixture makes a server with a secret of three versions with
// every attribute set, and returns it, a client and the blob.
func backupFixture(t *testing.T) (*Server, *azsecrets.Client, []byte) {
	t.Helper()
	s := NewTestServer(t, nil)
	c := newClient(t, s)
	ctx := context.Background()
	exp := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	nbf := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i, p := range []azsecrets.SetSecretParameters{
		{Value: to.Ptr(backupValue + "-1"), ContentType: to.Ptr("text/plain"), Tags: map[string]*string{"team": to.Ptr("payments")},
			SecretAttributes: &azsecrets.SecretAttributes{Expires: &exp, NotBefore: &nbf}},
		{Value: to.Ptr(backupValue + "-2"), SecretAttributes: &azsecrets.SecretAttributes{Enabled: to.Ptr(false)}},
		{Value: to.Ptr(backupValue)},
	} {
		if _, err := c.SetSecret(ctx, backupName, p, nil); err != nil {
			t.Fatalf("SetSecret %d: %v", i, err)
		}
	}
	bk, err := c.BackupSecret(ctx, backupName, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, c, bk.Value
}

// TestBackupIsOpaque checks that a blob shows neither the name nor any
// value, in its wire form (base64url) or decoded, and that it keeps the
// base64url alphabet (no padding) real blobs use.
func TestBackupIsOpaque(t *testing.T) {
	s, _, raw := backupFixture(t)
	tok, _ := s.IssueToken()
	status, body, _ := rawDo(t, s, "POST", "secrets/"+backupName+"/backup?api-version="+LatestAPIVersion, tok, nil)
	if status != 200 {
		t.Fatalf("backup: %d %s", status, body)
	}
	wire := strings.TrimSuffix(strings.TrimPrefix(body, `{"value":"`), `"}`)
	if strings.Trim(wire, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		t.Fatalf("blob %q is not unpadded base64url", wire)
	}
	decoded, err := base64.RawURLEncoding.DecodeString(wire)
	if err != nil {
		t.Fatal(err)
	}
	for _, form := range [][]byte{[]byte(wire), decoded, raw} {
		lower := bytes.ToLower(form)
		for _, secret := range []string{backupName, backupValue, "payments", "text/plain"} {
			if bytes.Contains(lower, []byte(strings.ToLower(secret))) {
				t.Errorf("blob shows %q", secret)
			}
		}
	}
	// Two backups of the same secret differ (a fresh nonce each time).
	if _, again, _ := rawDo(t, s, "POST", "secrets/"+backupName+"/backup?api-version="+LatestAPIVersion, tok, nil); again == body {
		t.Error("two backups are identical")
	}
}

// TestBackupRoundTrip restores a blob into the server that made it, after
// purging the secret, with every version, its id, value and attributes.
func TestBackupRoundTrip(t *testing.T) {
	s, c, blob := backupFixture(t)
	ctx := context.Background()
	before := listVersions(t, c)
	values := map[string]string{}
	for id := range before {
		got, err := c.GetSecret(ctx, backupName, id, nil)
		if err == nil {
			values[id] = *got.Value
		}
	}
	if err := s.DeleteSecret(backupName); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PurgeDeletedSecret(ctx, backupName, nil); err != nil {
		t.Fatal(err)
	}
	r, err := c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: blob}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Value != nil || r.ID.Name() != backupName {
		t.Fatalf("restore answered %+v", r)
	}
	after := listVersions(t, c)
	if len(after) != 3 || len(before) != 3 {
		t.Fatalf("versions before %d, after %d", len(before), len(after))
	}
	for id, b := range before {
		a, ok := after[id]
		if !ok || *a.Enabled != *b.Enabled || !timeEq(a.Expires, b.Expires) || !timeEq(a.NotBefore, b.NotBefore) ||
			!a.Created.Equal(*b.Created) || !a.Updated.Equal(*b.Updated) || !strEq(a.contentType, b.contentType) || a.tags != b.tags {
			t.Errorf("version %s: before %+v, after %+v", id, b, a)
		}
		if v, ok := values[id]; ok {
			got, err := c.GetSecret(ctx, backupName, id, nil)
			if err != nil || *got.Value != v {
				t.Errorf("version %s: value after restore %v, %v", id, got.Value, err)
			}
		}
	}
	if got, err := c.GetSecret(ctx, backupName, "", nil); err != nil || *got.Value != backupValue {
		t.Fatalf("latest after restore: %v, %v", got.Value, err)
	}
	// A second restore of the same blob conflicts, as in Key Vault.
	_, err = c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: blob}, nil)
	if re := responseError(t, err); re.StatusCode != 409 || re.ErrorCode != "Conflict" {
		t.Fatalf("second restore: %v", err)
	}
}

// TestBackupRefusedElsewhere checks that a blob restores only into the
// server that made it and only unchanged.
func TestBackupRefusedElsewhere(t *testing.T) {
	_, c, blob := backupFixture(t)
	other := NewTestServer(t, &Options{VaultName: "other-vault"})
	oc := newClient(t, other)
	ctx := context.Background()
	refused := func(what string, c *azsecrets.Client, blob []byte) {
		t.Helper()
		_, err := c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: blob}, nil)
		re := responseError(t, err)
		if re.StatusCode != 400 || re.ErrorCode != "BadParameter" || !strings.Contains(re.Error(), "Cannot decrypt backup blob.") {
			t.Errorf("%s: %v", what, err)
		}
	}
	refused("another server", oc, blob)
	if _, err := other.Versions(backupName); err == nil {
		t.Error("the other server restored the secret")
	}

	// Free the name in the server that made the blob, so that only the
	// blob's integrity decides.
	c.DeleteSecret(ctx, backupName, nil)
	c.PurgeDeletedSecret(ctx, backupName, nil)
	// A byte flipped in the header, the nonce, the ciphertext and the tag,
	// through the SDK; every byte is flipped in TestBackupEveryByteFlipped.
	for _, i := range []int{0, len(backupFormat) - 1, len(backupFormat), len(backupFormat) + 11, len(backupFormat) + 12, len(blob) / 2, len(blob) - 17, len(blob) - 1} {
		bad := bytes.Clone(blob)
		bad[i] ^= 0x01
		refused("byte "+strconv.Itoa(i)+" flipped", c, bad)
	}
	refused("truncated", c, blob[:len(blob)-1])
	refused("extended", c, append(bytes.Clone(blob), 0))
	refused("empty body after the header", c, []byte(backupFormat))
	refused("not a blob", c, []byte("hello"))
	if _, err := c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: blob}, nil); err != nil {
		t.Fatalf("the untouched blob: %v", err)
	}
}

// TestBackupEveryByteFlipped flips each bit of a blob, one at a time, and
// restores it without HTTP.
func TestBackupEveryByteFlipped(t *testing.T) {
	var v vault
	v.init()
	v.active["k"] = &secret{name: "k", versions: []*version{{id: "0123", value: "x", enabled: true}}}
	blob, _ := base64.RawURLEncoding.DecodeString(v.backup(v.active["k"]))
	delete(v.active, "k")
	for i := range blob {
		for bit := range 8 {
			bad := bytes.Clone(blob)
			bad[i] ^= 1 << bit
			if _, err := v.restore(base64.RawURLEncoding.EncodeToString(bad)); err == nil || err.status != 400 ||
				err.message != "Cannot decrypt backup blob." {
				t.Fatalf("byte %d bit %d flipped: %v", i, bit, err)
			}
		}
	}
	if _, err := v.restore(base64.RawURLEncoding.EncodeToString(blob)); err != nil {
		t.Fatalf("the blob itself: %v", err)
	}
}

// TestBackupFormatIsAssociatedData checks that the format header is
// authenticated: a blob sealed under the same key but relabelled with
// another format version is refused.
func TestBackupFormatIsAssociatedData(t *testing.T) {
	var v vault
	v.init()
	v.active["k"] = &secret{name: "k", versions: []*version{{id: "0123", value: "x", enabled: true}}}
	blob, _ := base64.RawURLEncoding.DecodeString(v.backup(v.active["k"]))
	delete(v.active, "k")
	relabelled := append([]byte(strings.Replace(backupFormat, "v2", "v3", 1)), blob[len(backupFormat):]...)
	// Accept the relabelled header, so that only the seal can refuse it.
	if _, err := v.backups.Open(nil, relabelled[len(backupFormat):][:v.backups.NonceSize()],
		relabelled[len(backupFormat)+v.backups.NonceSize():], relabelled[:len(backupFormat)]); err == nil {
		t.Fatal("a blob opened under another format version")
	}
	if _, err := v.restore(base64.RawURLEncoding.EncodeToString(blob)); err != nil {
		t.Fatalf("the blob itself: %v", err)
	}
}

type versionProps struct {
	Enabled                              *bool
	Expires, NotBefore, Created, Updated *time.Time
	contentType                          *string
	tags                                 string
}

func listVersions(t *testing.T, c *azsecrets.Client) map[string]versionProps {
	t.Helper()
	out := map[string]versionProps{}
	pager := c.NewListSecretPropertiesVersionsPager(backupName, nil)
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range page.Value {
			tags := ""
			for k, v := range p.Tags {
				tags += k + "=" + *v + ";"
			}
			out[p.ID.Version()] = versionProps{p.Attributes.Enabled, p.Attributes.Expires, p.Attributes.NotBefore,
				p.Attributes.Created, p.Attributes.Updated, p.ContentType, tags}
		}
	}
	return out
}

func timeEq(a, b *time.Time) bool { return a == nil && b == nil || a != nil && b != nil && a.Equal(*b) }

func strEq(a, b *string) bool { return a == nil && b == nil || a != nil && b != nil && *a == *b }
