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
	`Subscription "rotations" validated by the webhook`,
	"without the shared secret refused: true",
	"OnRotate",
	"Event Grid delivered SecretNewVersionCreated: 200",
	"Get now serves the new version",
	"events received 1, acted on 1, deliveries rejected 1",
}
