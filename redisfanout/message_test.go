package redisfanout

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func strconvItoa(i int) string { return strconv.Itoa(i) }

func TestMessageRoundTripAndRejections(t *testing.T) {
	now := time.Now()
	n := notice{Vault: "myvault.vault.azure.net", Name: "ApiKey", Version: strings.Repeat("a", 32), TS: now.UnixMilli(), N: 3}
	msg, err := encode(testKey, "ch", n)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := decode(testKey, "ch", msg, now.Add(time.Minute), 5*time.Minute); err != nil || got != n {
		t.Fatalf("decode = %+v, %v", got, err)
	}
	withBody := func(body string) string {
		return msgPrefix + encodeMAC(testKey, "ch", body) + "." + body
	}
	for _, tc := range []struct {
		name, msg string
		want      error
	}{
		{"other channel", msg, errSignature},
		{"empty", "", errMalformed},
		{"no MAC", msgPrefix + "{}", errMalformed},
		{"MAC not base64", msgPrefix + strings.Repeat("*", macLen) + ".{}", errMalformed},
		{"oversized", msg + strings.Repeat(" ", MaxMessageSize), errOversized},
		{"unknown field", withBody(`{"vault":"a","name":"b","version":"c","ts":1,"value":"x"}`), errMalformed},
		{"two bodies", withBody(`{} {}`), errMalformed},
		{"not JSON", withBody(`nope`), errMalformed},
		{"stale", withBody(fmt.Sprintf(`{"vault":"a.b","name":"b","version":"c","ts":%d}`, now.Add(-6*time.Minute).UnixMilli())), errStale},
		{"bad host", withBody(fmt.Sprintf(`{"vault":"A B","name":"b","version":"c","ts":%d}`, now.UnixMilli())), errNotice},
		{"no name", withBody(fmt.Sprintf(`{"vault":"a.b","name":"","version":"c","ts":%d}`, now.UnixMilli())), errNotice},
	} {
		channel := "ch"
		if tc.name == "other channel" {
			channel = "other"
		}
		if _, err := decode(testKey, channel, tc.msg, now, 5*time.Minute); err != tc.want {
			t.Errorf("%s: decode = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func encodeMAC(key []byte, channel, body string) string {
	return base64.RawURLEncoding.EncodeToString(mac(key, channel, []byte(body)))
}

func TestClaimKeyDependsOnKeyAndChannel(t *testing.T) {
	id := noticeID("v.vault.azure.net", "ApiKey", "ABC")
	k := claimKey(testKey, "ch", id)
	if !strings.HasPrefix(k, "ch:published:") || len(k) != len("ch:published:")+32 {
		t.Errorf("claim key %q", k)
	}
	if k == claimKey([]byte("another key, 32 bytes or longer!"), "ch", id) || k == claimKey(testKey, "ch2", id) {
		t.Error("the claim key does not depend on the key and channel")
	}
	if id != noticeID("v.vault.azure.net", "apikey", "abc") {
		t.Error("names and versions are not case-insensitive")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
		text string
	}{
		{io.EOF, ErrUnreachable, "redisfanout: publish: redis unreachable"},
		{context.DeadlineExceeded, ErrTimeout, "redisfanout: publish: redis timed out"},
		{redisError("NOPERM this user has no permissions to run the 'publish' command"), ErrRefused, "redisfanout: publish: redis refused the command (NOPERM)"},
		{redisError("weird lower-case error with password hunter2"), ErrRefused, "redisfanout: publish: redis refused the command"},
	} {
		e := classify("publish", tc.err)
		if !errors.Is(e, tc.want) || !errors.Is(e, tc.err) || e.Error() != tc.text {
			t.Errorf("classify(%v) = %q; want %q, wrapping %v", tc.err, e, tc.text, tc.want)
		}
	}
}

// redisError is an error Redis answered, as go-redis reports it.
type redisError string

func (e redisError) Error() string { return string(e) }
func (redisError) RedisError()     {}

var _ redis.Error = redisError("")

// TestNoticesGetConsecutiveSlices checks the arithmetic that keeps a
// fleet's refreshes within ReadRate: with 1,000 instances at 300 reads a
// second, each notice gets 3.33 s, after the notices before it; a notice
// after a quiet spell starts at once, and none waits past maxQueueDelay.
func TestNoticesGetConsecutiveSlices(t *testing.T) {
	f := &FanOut{cfg: config{readRate: 300}}
	now := time.Unix(1_800_000_000, 0)
	n, rate := 1000.0, 300.0
	width := time.Duration(n / rate * float64(time.Second))
	for i := range 20 {
		delay, spread := f.slice(now, 1000)
		if spread != width || delay != time.Duration(i)*width {
			t.Fatalf("notice %d: delay %v spread %v, want %v and %v", i, delay, spread, time.Duration(i)*width, width)
		}
	}
	if delay, _ := f.slice(now.Add(time.Hour), 1000); delay != 0 {
		t.Errorf("a notice after a quiet hour waits %v", delay)
	}
	for range 1000 {
		if delay, _ := f.slice(now.Add(2*time.Hour), maxMembers); delay > maxQueueDelay {
			t.Fatalf("a notice waits %v, past maxQueueDelay", delay)
		}
	}
}

// Members are counted only with a tag made under the key: idle
// subscribers, forged members and members of another channel are not.
func TestMembersAreAuthenticated(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef"
	m := member(testKey, "ch", id)
	if !validMember(testKey, "ch", m) {
		t.Fatal("a member made under the key is refused")
	}
	other := append([]byte(nil), testKey...)
	other[0] ^= 1
	for _, bad := range []string{member(other, "ch", id), member(testKey, "other", id), id, id + ".", "x." + m[33:], m + "0", ""} {
		if validMember(testKey, "ch", bad) {
			t.Errorf("member %q counted", bad)
		}
	}
}
