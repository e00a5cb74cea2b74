package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestQuickstartLocal(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out, func(string) string { return "" }, nil); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"started a local Key Vault",
		"read from the vault",
		"cached Gets",
		"vault requests made by them: 0",
		"OnRotate fired",
		"this demo's TTL is 1s; the default is 1h0m0s",
		"0 errors (stale value served",
		"rotations 1",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, value := range []string{"sk-live-first-key", "sk-live-second-key"} {
		if strings.Contains(out.String(), value) {
			t.Fatalf("output reveals a value:\n%s", out.String())
		}
	}
}

func TestQuickstartRealVaultNeedsAName(t *testing.T) {
	env := map[string]string{"AZURE_KEYVAULT_URL": "https://myvault.vault.azure.net/"}
	err := run(context.Background(), &bytes.Buffer{}, func(k string) string { return env[k] }, nil)
	if err == nil || !strings.Contains(err.Error(), "KEYVAULT_SECRET_NAME") {
		t.Fatalf("err = %v", err)
	}
}
