package redisfanout

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// A message on the channel is one line of ASCII:
//
//	kvs1.<MAC>.<body>
//
// body is JSON, {"vault":"myvault.vault.azure.net","name":"ApiKey",
// "version":"<32 hex>","ts":<unix milliseconds>,"n":<instances>}; MAC is the unpadded
// base64url HMAC-SHA256, under Options.Key, of macLabel, the channel, a
// newline and the body. The channel is signed so that a message is valid on
// its own channel only. The MAC is checked before the body is parsed.

const (
	msgPrefix = "kvs1."
	macLen    = 43 // base64.RawURLEncoding of 32 bytes
	macLabel  = "kvsecrets/redisfanout v1\n"
)

// notice is a message's body.
type notice struct {
	Vault   string `json:"vault"`   // lower-case host[:port]
	Name    string `json:"name"`    // the secret's name
	Version string `json:"version"` // the new version
	TS      int64  `json:"ts"`      // when it was sent, Unix milliseconds
	N       int64  `json:"n"`       // instances of the fleet the publisher counted (members), for the slices
}

// Reasons a message is rejected, as logged.
var (
	errOversized = errors.New("oversized")
	errMalformed = errors.New("malformed")
	errSignature = errors.New("bad signature")
	errStale     = errors.New("timestamp outside the replay window")
	errNotice    = errors.New("invalid notice")
)

func mac(key []byte, channel string, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(macLabel))
	h.Write([]byte(channel))
	h.Write([]byte{'\n'})
	h.Write(body)
	return h.Sum(nil)
}

// encode signs n for channel.
func encode(key []byte, channel string, n notice) (string, error) {
	body, err := json.Marshal(n)
	if err != nil {
		return "", err
	}
	return msgPrefix + base64.RawURLEncoding.EncodeToString(mac(key, channel, body)) + "." + string(body), nil
}

// decode checks a message received on channel at now and returns its
// notice. Nothing of an unauthenticated message is parsed beyond its
// framing.
func decode(key []byte, channel, msg string, now time.Time, window time.Duration) (notice, error) {
	var n notice
	if len(msg) > MaxMessageSize {
		return n, errOversized
	}
	rest, ok := strings.CutPrefix(msg, msgPrefix)
	if !ok || len(rest) < macLen+1 || rest[macLen] != '.' {
		return n, errMalformed
	}
	got, err := base64.RawURLEncoding.DecodeString(rest[:macLen])
	if err != nil {
		return n, errMalformed
	}
	body := []byte(rest[macLen+1:])
	if !hmac.Equal(got, mac(key, channel, body)) {
		return n, errSignature
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil || dec.More() {
		return notice{}, errMalformed
	}
	if d := now.Sub(time.UnixMilli(n.TS)); d > window || d < -window {
		return n, errStale
	}
	if !validHost(n.Vault) || n.Name == "" || len(n.Name) > 127 || len(n.Version) > 64 || n.N < 1 || n.N > maxMembers {
		return n, errNotice
	}
	return n, nil
}

// validHost accepts a lower-case host[:port] as Provider hosts are
// written.
func validHost(h string) bool {
	if h == "" || len(h) > 260 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '-' && c != ':' && c != '[' && c != ']' {
			return false
		}
	}
	return true
}

// claimKey is the Redis key whose SET NX claims the publication of a
// version: keyed by the HMAC so that someone without Options.Key can
// neither predict nor pre-empt it.
func claimKey(key []byte, channel, id string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("kvsecrets/redisfanout claim\n" + channel + "\n" + id))
	return channel + ":published:" + hex.EncodeToString(h.Sum(nil)[:16])
}

// noticeID names a version of a secret for the claim and the memory of
// versions heard.
func noticeID(vault, name, version string) string {
	return vault + "/" + strings.ToLower(name) + "/" + strings.ToLower(version)
}

// Members. Each FanOut announces itself every countInterval in a sorted set
// (Channel+":members"), as "<id>.<tag>" scored by the time, where tag is an
// HMAC of the id: the publisher of a notice counts the members announced
// within memberTTL whose tag is valid, and signs the count into the
// notice. So every instance uses the same count for a notice, and nobody
// without the key can inflate it (idle subscribers and forged members are
// not counted).

// membersKey is the sorted set of members.
func membersKey(channel string) string { return channel + ":members" }

// memberTag is the HMAC tag of a member id.
func memberTag(key []byte, channel, id string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("kvsecrets/redisfanout member\n" + channel + "\n" + id))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// member is the sorted set's member for id.
func member(key []byte, channel, id string) string { return id + "." + memberTag(key, channel, id) }

// validMember reports whether m is a member made under key.
func validMember(key []byte, channel, m string) bool {
	id, tag, ok := strings.Cut(m, ".")
	if !ok || len(id) != 32 || len(tag) != 32 {
		return false
	}
	return hmac.Equal([]byte(tag), []byte(memberTag(key, channel, id)))
}
