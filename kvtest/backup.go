package kvtest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
)

// Backups. Key Vault's backup blob is opaque: base64url of
// ")AzureKeyVaultSecretBackupV1.microsoft.com" and a JWE (the real
// recording TestBackupRestore.json in azsecrets v0.12.0's testdata), which
// only Key Vault can decrypt, and only in the same subscription and
// geography. kvtest's blob is likewise base64url (no padding) of a format
// header, a random nonce and the secret's versions sealed with AES-256-GCM
// under a key each Server makes at construction, with the format header as
// associated data. It shows neither the name nor any value, and it
// restores only into the server that made it: another server, a restarted
// cmd/kvlocal or a changed byte gets Key Vault's answer to a blob it
// cannot decrypt.

// backupFormat heads every blob and is the associated data of its seal: a
// blob of another format version is refused even under the same key.
const backupFormat = "kvtest-secret-backup-v2."

// backupKeyBytes is AES-256's key length.
const backupKeyBytes = 32

// badBackup is the answer to a blob that cannot be opened. The message is
// Key Vault's: "Cannot decrypt backup blob." is what az keyvault prints
// when a restore into a vault of another geography fails
// (MicrosoftDocs/azure-docs issue #107520, Azure/azure-cli issue #8767).
// No source shows that answer's status and code; kvtest keeps 400
// BadParameter, Key Vault's answer to other malformed input.
func badBackup() *apiError { return badParameter("Cannot decrypt backup blob.") }

// newBackupAEAD returns an AES-256-GCM under a fresh random key.
func newBackupAEAD() cipher.AEAD {
	key := make([]byte, backupKeyBytes)
	rand.Read(key) // never fails (crypto/rand)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return aead
}

type backupVersion struct {
	ID, Value, ContentType string
	Tags                   map[string]string
	Enabled                bool
	NBF, EXP               *int64
	Created, Updated       int64
}

type backupJSON struct {
	Name     string          `json:"name"`
	Versions []backupVersion `json:"versions"`
}

// backup returns the blob of every version of s.
func (v *vault) backup(s *secret) string {
	b := backupJSON{Name: s.name}
	for _, x := range s.versions {
		b.Versions = append(b.Versions, backupVersion{x.id, x.value, x.contentType, x.tags, x.enabled, x.nbf, x.exp, x.created, x.updated})
	}
	plain, _ := json.Marshal(b)
	blob := make([]byte, len(backupFormat)+v.backups.NonceSize(), len(backupFormat)+v.backups.NonceSize()+len(plain)+v.backups.Overhead())
	copy(blob, backupFormat)
	nonce := blob[len(backupFormat):]
	rand.Read(nonce)
	blob = v.backups.Seal(blob, nonce, plain, []byte(backupFormat))
	return base64.RawURLEncoding.EncodeToString(blob)
}

// restore opens a blob made by backup and stores its secret, with every
// version, its id and attributes, as they were.
func (v *vault) restore(blob string) (*secret, *apiError) {
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(blob, "="))
	if err != nil || !bytes.HasPrefix(raw, []byte(backupFormat)) || len(raw) < len(backupFormat)+v.backups.NonceSize() {
		return nil, badBackup()
	}
	sealed := raw[len(backupFormat):]
	nonce, sealed := sealed[:v.backups.NonceSize()], sealed[v.backups.NonceSize():]
	plain, err := v.backups.Open(nil, nonce, sealed, []byte(backupFormat))
	if err != nil {
		return nil, badBackup()
	}
	var b backupJSON
	if err := json.Unmarshal(plain, &b); err != nil || !validName(b.Name) || len(b.Versions) == 0 {
		return nil, badBackup() // sealed by this server, so never: a bug
	}
	key := strings.ToLower(b.Name)
	if v.active[key] != nil || v.deleted[key] != nil {
		return nil, &apiError{status: http.StatusConflict, code: "Conflict",
			message: "There was a conflict restoring the secret '" + b.Name + "'. A secret with the same name exists or is deleted but not purged."}
	}
	s := &secret{name: b.Name}
	for _, x := range b.Versions {
		s.versions = append(s.versions, &version{id: x.ID, value: x.Value, contentType: x.ContentType, tags: x.Tags,
			enabled: x.Enabled, nbf: x.NBF, exp: x.EXP, created: x.Created, updated: x.Updated})
	}
	v.active[key] = s
	return s, nil
}
