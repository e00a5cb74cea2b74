package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestExample(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"Loaded the config in",
		"Database app@db.internal:5432",
		"SentryDSN set: false",
		`field Config.SendGridKey (secret "SendGridKey" in vault `,
		`field Config.Cache.Password (secret "RedisPassword" in vault `,
		`field Config.Database (secret "DatabaseConfig"): JSON string at port cannot be decoded into int`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, value := range []string{"sk_live", "db-password", "whsec", "redis-password"} {
		if strings.Contains(out.String(), value) {
			t.Fatalf("output reveals a value:\n%s", out.String())
		}
	}
}
