"""The real Python Key Vault SDK (azure-keyvault-secrets on azure-core, from
Debian's python3-azure) against cmd/kvlocal.

run-python.sh starts kvlocal and sets KVLOCAL_URL, KVLOCAL_TOKEN and
KVLOCAL_CA. Every request goes through the SDK's own pipeline: its
ChallengeAuthPolicy sends the first request of a client without a token,
reads kvlocal's 401 challenge, asks the credential below for a token for the
challenge's scope and tenant, and sends the request again with it. A
transport that records every exchange on the wire lets the tests check that
flow and the paging requests, not only what the SDK returns.
"""

import datetime
import os
import re
import sys
import time
import unittest

from azure.core import __version__ as azure_core_version
from azure.core import credentials as core_credentials
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets import _version as secrets_version

try:
    # azure-keyvault-secrets up to 4.7 caches challenges per vault for the
    # whole process; later releases keep them in each client's policy.
    from azure.keyvault.secrets._shared import http_challenge_cache
except ImportError:
    http_challenge_cache = None

URL = os.environ.get("KVLOCAL_URL")
TOKEN = os.environ.get("KVLOCAL_TOKEN")
CA = os.environ.get("KVLOCAL_CA")
if not (URL and TOKEN and CA):
    sys.exit("KVLOCAL_URL, KVLOCAL_TOKEN and KVLOCAL_CA are not set; run this through run-python.sh")
VAULT = URL.rstrip("/")
VERSION_RE = re.compile(r"^[0-9a-f]{32}$")


class KvlocalCredential:
    """A TokenCredential that returns kvlocal's fixed token (its -token flag)
    and records what the SDK asked for. get_token is the protocol of the
    installed azure-core (1.26); get_token_info is the protocol of azure-core
    1.31 and later, given too so that a newer azure-core takes this path."""

    def __init__(self):
        self.calls = []

    def get_token(self, *scopes, claims=None, tenant_id=None, **kwargs):
        self.calls.append((scopes, tenant_id))
        return core_credentials.AccessToken(TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        options = options or {}
        self.calls.append((scopes, options.get("tenant_id")))
        return core_credentials.AccessTokenInfo(TOKEN, int(time.time()) + 3600)


class RecordingTransport(RequestsTransport):
    """The SDK's default transport, trusting kvlocal's CA, recording
    (method, url, Authorization header, status, response headers) of every
    exchange."""

    def __init__(self):
        super().__init__(connection_verify=CA)
        self.exchanges = []

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        self.exchanges.append(
            (request.method, request.url, request.headers.get("Authorization"), response.status_code, response.headers)
        )
        return response


def new_client():
    credential = KvlocalCredential()
    transport = RecordingTransport()
    client = SecretClient(
        URL,
        credential,
        # 127.0.0.1 is not under vault.azure.net.
        verify_challenge_resource=False,
        transport=transport,
        # A wrong answer must fail the test, not be retried into a right one.
        retry_total=0,
    )
    return client, credential, transport


def setUpModule():
    print(
        f"azure-keyvault-secrets {secrets_version.VERSION}, azure-core {azure_core_version}, "
        f"Python {sys.version.split()[0]}, kvlocal at {URL}",
        file=sys.stderr,
    )


class KvlocalConformance(unittest.TestCase):
    def setUp(self):
        # Forget the process's cached challenges, so that each test's new
        # client goes through the 401 challenge again.
        if http_challenge_cache is not None:
            http_challenge_cache.clear()
        self.client, self.credential, self.transport = new_client()
        self.addCleanup(self.client.close)

    def test_get_seeded_secret_through_challenge(self):
        s = self.client.get_secret("MyApiKey")
        self.assertEqual(s.value, "seeded-value")
        self.assertEqual(s.name, "MyApiKey")
        p = s.properties
        self.assertRegex(p.version, VERSION_RE)
        self.assertEqual(s.id, f"{VAULT}/secrets/MyApiKey/{p.version}")
        self.assertEqual(p.id, s.id)
        self.assertEqual(p.vault_url, VAULT)
        self.assertTrue(p.enabled)
        self.assertIsNone(p.content_type)
        self.assertIsInstance(p.created_on, datetime.datetime)
        self.assertIsInstance(p.updated_on, datetime.datetime)
        self.assertLessEqual(p.created_on, datetime.datetime.now(datetime.timezone.utc))
        self.assertIsNone(p.expires_on)
        self.assertIsNone(p.not_before)
        self.assertTrue(p.recovery_level, "recoveryLevel is missing")

        # The challenge flow: a request without a token, a 401 naming the
        # resource and the tenant, one token for that scope and tenant, and
        # the same request again with the bearer token.
        self.assertEqual(len(self.transport.exchanges), 2, self.transport.exchanges)
        (m1, u1, auth1, st1, h1), (m2, u2, auth2, st2, _) = self.transport.exchanges
        self.assertEqual((m1, m2), ("GET", "GET"))
        self.assertEqual(u1, u2)
        self.assertIsNone(auth1)
        self.assertEqual(st1, 401)
        challenge = h1.get("WWW-Authenticate", "")
        self.assertTrue(challenge.startswith("Bearer "), challenge)
        self.assertIn('resource="https://vault.azure.net"', challenge)
        self.assertEqual(auth2, f"Bearer {TOKEN}")
        self.assertEqual(st2, 200)
        self.assertEqual(len(self.credential.calls), 1, self.credential.calls)
        scopes, tenant = self.credential.calls[0]
        self.assertEqual(scopes, ("https://vault.azure.net/.default",))
        self.assertTrue(tenant, "the challenge named no tenant")
        self.assertIn(tenant, challenge)

        # The token is reused: no second challenge, no second get_token.
        self.client.get_secret("MyApiKey")
        self.assertEqual(len(self.transport.exchanges), 3)
        self.assertEqual(self.transport.exchanges[2][2], f"Bearer {TOKEN}")
        self.assertEqual(self.transport.exchanges[2][3], 200)
        self.assertEqual(len(self.credential.calls), 1)

    def test_set_get_and_new_version(self):
        expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=180)
        v1 = self.client.set_secret("PyKey", "one", content_type="text/plain", tags={"team": "py"}, expires_on=expires)
        self.assertEqual(v1.value, "one")
        self.assertEqual(v1.name, "PyKey")
        self.assertRegex(v1.properties.version, VERSION_RE)
        self.assertEqual(v1.id, f"{VAULT}/secrets/PyKey/{v1.properties.version}")
        self.assertEqual(v1.properties.content_type, "text/plain")
        self.assertEqual(v1.properties.tags, {"team": "py"})
        self.assertEqual(v1.properties.expires_on, expires)
        self.assertTrue(v1.properties.enabled)

        # The set's body survived the challenge (the SDK sends the first
        # request empty and the body again after the 401).
        got = self.client.get_secret("pykey")  # names are case-insensitive
        self.assertEqual(got.value, "one")
        self.assertEqual(got.id, v1.id)
        self.assertEqual(got.properties.content_type, "text/plain")
        self.assertEqual(got.properties.tags, {"team": "py"})
        self.assertEqual(got.properties.expires_on, expires)

        v2 = self.client.set_secret("PyKey", "two")
        self.assertNotEqual(v2.properties.version, v1.properties.version)
        self.assertIsNone(v2.properties.content_type)
        self.assertIsNone(v2.properties.tags)
        self.assertEqual(self.client.get_secret("PyKey").value, "two")
        self.assertEqual(self.client.get_secret("PyKey").properties.version, v2.properties.version)
        old = self.client.get_secret("PyKey", v1.properties.version)
        self.assertEqual(old.value, "one")
        self.assertEqual(old.properties.tags, {"team": "py"})

    def test_list_versions_across_pages(self):
        # More versions than kvlocal's default page of 25.
        want = [self.client.set_secret("Paged", f"v{i}").id for i in range(30)]
        self.assertEqual(len(set(want)), 30)

        def pages(**kwargs):
            seen = []
            for page in self.client.list_properties_of_secret_versions("Paged", **kwargs).by_page():
                items = list(page)
                for p in items:
                    self.assertEqual(p.name, "Paged")
                    self.assertTrue(p.enabled)
                seen.append([p.id for p in items])
            return seen

        def check(seen, sizes):
            self.assertEqual([len(x) for x in seen], sizes)
            ids = [i for page in seen for i in page]
            self.assertEqual(len(ids), len(set(ids)), "a version was listed twice")
            self.assertEqual(sorted(ids), sorted(want))

        before = len(self.transport.exchanges)
        check(pages(), [25, 5])
        self.assertEqual(len(self.transport.exchanges) - before, 2, "one request per page")
        check(pages(max_page_size=7), [7, 7, 7, 7, 2])
        # The next links carry maxresults on, as Key Vault's do.
        for method, url, _, status, _ in self.transport.exchanges[before + 3 :]:
            self.assertEqual((method, status), ("GET", 200))
            self.assertIn("maxresults=7", url)

        names = [p.name for p in self.client.list_properties_of_secrets()]
        self.assertIn("MyApiKey", names)
        self.assertIn("Paged", names)

    def test_missing_secret_is_404_secret_not_found(self):
        with self.assertRaises(ResourceNotFoundError) as cm:
            self.client.get_secret("NoSuchSecret")
        e = cm.exception
        print(
            f"\n  ResourceNotFoundError: status_code={e.status_code} reason={e.reason!r} "
            f"error.code={e.error.code!r} error.message={e.error.message!r} "
            f"headers={dict(e.response.headers)}",
            file=sys.stderr,
        )
        self.assertEqual(e.status_code, 404)
        self.assertEqual(e.response.status_code, 404)
        self.assertEqual(e.reason, "Not Found")
        self.assertEqual(e.error.code, "SecretNotFound")
        self.assertIn("NoSuchSecret", e.error.message)
        self.assertIn("(SecretNotFound)", e.message)
        self.assertTrue(e.response.headers.get("Content-Type", "").startswith("application/json"))
        # Real Key Vault sends x-ms-request-id (a UUID) and its own
        # headers on every answer, errors included (see the recordings in
        # testdata/realdata): the request id is what a user quotes to
        # Azure support from an SDK error.
        self.assertRegex(e.response.headers.get("x-ms-request-id", ""),
                         r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        for h in ("x-ms-keyvault-service-version", "x-ms-keyvault-region", "x-ms-keyvault-network-info"):
            self.assertTrue(e.response.headers.get(h), h)

    def test_disabled_secret_is_403_forbidden(self):
        s = self.client.set_secret("ToDisable", "x")
        updated = self.client.update_secret_properties("ToDisable", s.properties.version, enabled=False)
        self.assertFalse(updated.enabled)
        self.assertEqual(updated.version, s.properties.version)
        with self.assertRaises(HttpResponseError) as cm:
            self.client.get_secret("ToDisable")
        e = cm.exception
        print(
            f"\n  HttpResponseError: status_code={e.status_code} reason={e.reason!r} "
            f"error.code={e.error.code!r} error.innererror={e.error.innererror!r} "
            f"error.message={e.error.message!r}",
            file=sys.stderr,
        )
        self.assertNotIsInstance(e, ResourceNotFoundError)
        self.assertEqual(e.status_code, 403)
        self.assertEqual(e.error.code, "Forbidden")
        self.assertEqual(e.error.innererror, {"code": "SecretDisabled"})
        self.assertIn("disabled", e.error.message)
        # A disabled secret's properties are still listed, as disabled.
        versions = list(self.client.list_properties_of_secret_versions("ToDisable"))
        self.assertEqual([(v.version, v.enabled) for v in versions], [(s.properties.version, False)])


if __name__ == "__main__":
    unittest.main(verbosity=2)
