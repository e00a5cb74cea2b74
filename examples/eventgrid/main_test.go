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
	`{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}`,
	"without the shared secret: 401",
	"SecretNewVersionCreated: 200",
	"OnRotate",
	"Get now serves the new version",
	"events received 1, acted on 1, deliveries rejected 1",
}
