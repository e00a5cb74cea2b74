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
	for _, want := range wants {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

var wants = []string{
	"partner (old key)      accepted",
	"attacker (random key)  refused",
	"(in 180 days)",
	"partner (new key)      accepted",
	"OnRotate: PartnerApiKey rotated",
	"only the new key works:\n   partner (old key)      refused",
	"writes 1",
}
