// The real JavaScript Key Vault SDK (@azure/keyvault-secrets) with the real
// @azure/identity AzureCliCredential, against cmd/kvlocal. run.sh starts
// kvlocal and sets KVLOCAL_URL, KVLOCAL_TOKEN and NODE_EXTRA_CA_CERTS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SecretClient } from "@azure/keyvault-secrets";
import { AzureCliCredential } from "@azure/identity";

const url = process.env.KVLOCAL_URL;
assert.ok(url, "KVLOCAL_URL is not set; run this through run.sh");

const client = new SecretClient(url, new AzureCliCredential({ additionallyAllowedTenants: ["*"] }), {
  // 127.0.0.1 is not under vault.azure.net.
  disableChallengeResourceVerification: true,
  retryOptions: { maxRetries: 0 },
});

test("get a seeded secret through the challenge and a CLI token", async () => {
  const s = await client.getSecret("MyApiKey");
  assert.equal(s.value, "seeded-value");
  assert.equal(s.name, "MyApiKey");
  assert.match(s.properties.version, /^[0-9a-f]{32}$/);
});

test("set, get latest, get by version, names case-insensitive", async () => {
  const expiresOn = new Date(Date.now() + 180 * 24 * 3600 * 1000);
  expiresOn.setMilliseconds(0);
  const v1 = await client.setSecret("JsKey", "one", { tags: { team: "js" }, expiresOn });
  // (4.10.0's setSecret and updateSecretProperties drop the contentType
  // option, so content types are covered by the Go SDK's conformance test.)
  const v2 = await client.setSecret("JsKey", "two");
  assert.equal(v1.value, "one");
  assert.equal(v1.properties.tags.team, "js");
  assert.equal(v1.properties.expiresOn.getTime(), expiresOn.getTime());
  assert.equal((await client.getSecret("jskey")).value, "two");
  const got1 = await client.getSecret("JsKey", { version: v1.properties.version });
  assert.equal(got1.value, "one");
  assert.equal(got1.properties.tags.team, "js");
  assert.notEqual(v1.properties.version, v2.properties.version);
});

test("list versions with paging", async () => {
  for (let i = 0; i < 5; i++) await client.setSecret("Paged", `v${i}`);
  let pages = 0;
  let items = 0;
  for await (const page of client.listPropertiesOfSecretVersions("Paged").byPage({ maxPageSize: 2 })) {
    pages++;
    items += page.length;
    for (const p of page) assert.equal(p.name, "Paged");
  }
  assert.equal(items, 5);
  assert.equal(pages, 3);
  const names = [];
  for await (const p of client.listPropertiesOfSecrets()) names.push(p.name);
  assert.ok(names.includes("MyApiKey") && names.includes("Paged"), names.join(","));
});

test("update and a disabled secret", async () => {
  const s = await client.setSecret("ToDisable", "x");
  const updated = await client.updateSecretProperties("ToDisable", s.properties.version, { enabled: false });
  assert.equal(updated.enabled, false);
  await assert.rejects(client.getSecret("ToDisable"), (err) => {
    assert.equal(err.statusCode, 403);
    assert.equal(err.code, "Forbidden");
    assert.match(err.message, /disabled/);
    return true;
  });
});

test("missing secret", async () => {
  await assert.rejects(client.getSecret("NoSuchSecret"), (err) => {
    assert.equal(err.statusCode, 404);
    assert.equal(err.code, "SecretNotFound");
    return true;
  });
});

test("delete with the poller, deleted endpoints, recover, purge", async () => {
  await client.setSecret("ToDelete", "bye");
  const poller = await client.beginDeleteSecret("ToDelete", { intervalInMs: 10 });
  const deleted = await poller.pollUntilDone();
  assert.equal(deleted.name, "ToDelete");
  assert.ok(deleted.recoveryId);
  await assert.rejects(client.getSecret("ToDelete"), (err) => err.statusCode === 404);
  assert.equal((await client.getDeletedSecret("ToDelete")).name, "ToDelete");
  const rec = await client.beginRecoverDeletedSecret("ToDelete", { intervalInMs: 10 });
  await rec.pollUntilDone();
  assert.equal((await client.getSecret("ToDelete")).value, "bye");
  await (await client.beginDeleteSecret("ToDelete", { intervalInMs: 10 })).pollUntilDone();
  await client.purgeDeletedSecret("ToDelete");
  await assert.rejects(client.getDeletedSecret("ToDelete"), (err) => err.statusCode === 404);
});
