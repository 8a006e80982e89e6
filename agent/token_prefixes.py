"""Well-known secret token prefixes, each with the vendor documentation that defines it.

Vendors put a fixed prefix on their tokens precisely so that scanners can find a
leaked one without guessing (GitHub's 2021 token format, GitLab's ``glpat-``, and
so on). This table is ours, written from each vendor's documentation named in
``source``; GitHub secret scanning's list of supported secrets was the checklist
of which vendors to cover. A test generates a token for every entry, in every
position a heartbeat allows.

``tail`` is the character class a token continues with after its prefix, and
``min_tail`` how many such characters make a match: at most the documented length,
so a truncated token still counts. Short prefixes that could end an ordinary word
(``sk-`` in ``disk-``, ``hf_``, ``dapi``) are matched only where no letter or digit
comes right before them; longer ones and AWS's key ids (as before this table) are
matched anywhere, glued to a word or not. Some need a tail longer than any of the
agent's own names.
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALNUM = "A-Za-z0-9"
URLSAFE = r"A-Za-z0-9_\-"  # a dash in a class is escaped, so that more may follow it
HEX = "0-9a-fA-F"
UPPER_ALNUM = "A-Z0-9"
BASE64 = r"A-Za-z0-9+/=_\-"


@dataclass(frozen=True, slots=True)
class TokenPrefix:
    """One vendor's token prefix, and the shape of what follows it."""

    prefix: str
    vendor: str
    source: str
    tail: str = URLSAFE
    min_tail: int = 20
    glued: bool = False  # matched right after a letter or digit, however short the prefix

    @property
    def bounded(self) -> bool:
        """Whether the prefix counts only where no letter or digit comes right before it."""
        # A prefix that starts with punctuation (".atlasv1.") follows a word by design.
        return len(self.prefix) < 5 and self.prefix[0].isalnum() and not self.glued

    def pattern(self) -> str:
        """The regular expression for a token with this prefix."""
        boundary = r"(?<![A-Za-z0-9])" if self.bounded else ""
        return rf"{boundary}{re.escape(self.prefix)}[{self.tail}]{{{self.min_tail}}}"


_GITHUB = "https://docs.github.com/en/authentication/keeping-your-account-and-data-secure/about-authentication-to-github#githubs-token-formats"
_GITLAB = "https://docs.gitlab.com/ee/security/tokens/#token-prefixes"
_SLACK = "https://api.slack.com/concepts/token-types"
_STRIPE = "https://docs.stripe.com/keys"
_AWS = "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html#identifiers-unique-ids"
_DIGITALOCEAN = "https://docs.digitalocean.com/reference/api/create-personal-access-token/"
_SHOPIFY = (
    "https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/generate-app-access-tokens-admin"
)
_VAULT = "https://developer.hashicorp.com/vault/docs/concepts/tokens#token-prefixes"
_DOPPLER = "https://docs.doppler.com/reference/auth-token-formats"
_SENTRY = "https://docs.sentry.io/account/auth-tokens/"
_SQUARE = "https://developer.squareup.com/docs/build-basics/access-tokens"
_PLANETSCALE = "https://planetscale.com/docs/concepts/service-tokens"

TOKEN_PREFIXES: tuple[TokenPrefix, ...] = (
    *(TokenPrefix(p, "GitHub", _GITHUB, ALNUM, 30) for p in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    TokenPrefix("github_pat_", "GitHub", _GITHUB, ALNUM + "_", 40),
    *(
        TokenPrefix(p, "GitLab", _GITLAB, URLSAFE + ".")
        for p in (
            "glpat-",
            "gloas-",
            "gldt-",
            "glrt-",
            "glrtr-",
            "glcbt-",
            "glptt-",
            "glft-",
            "glimt-",
            "glagent-",
            "glsoat-",
            "glffct-",
            "GR1348941",
        )
    ),
    *(
        TokenPrefix(p, "Slack", _SLACK, ALNUM + r"\-", 10)
        for p in ("xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-", "xoxe.xoxp-", "xapp-")
    ),
    TokenPrefix("hooks.slack.com/services/", "Slack", "https://api.slack.com/messaging/webhooks", ALNUM + "/", 20),
    *(TokenPrefix(p, "Stripe", _STRIPE, ALNUM, 10) for p in ("sk_live_", "rk_live_", "sk_test_", "rk_test_")),
    TokenPrefix("whsec_", "Stripe", "https://docs.stripe.com/webhooks#verify-official-libraries", ALNUM, 24),
    *(TokenPrefix(p, "AWS", _AWS, UPPER_ALNUM, 16, glued=True) for p in ("AKIA", "ASIA", "ABIA", "ACCA")),
    TokenPrefix("AIza", "Google", "https://cloud.google.com/docs/authentication/api-keys", URLSAFE, 30),
    TokenPrefix("GOCSPX-", "Google", "https://developers.google.com/identity/protocols/oauth2", URLSAFE, 24),
    TokenPrefix("ya29.", "Google", "https://developers.google.com/identity/protocols/oauth2", URLSAFE + ".", 30),
    TokenPrefix("sk-ant-", "Anthropic", "https://docs.anthropic.com/en/api/overview", URLSAFE, 32),
    # OpenAI's sk-, sk-proj-, sk-svcacct-, sk-admin-: longer than a pop id's or a mount's words.
    TokenPrefix("sk-", "OpenAI", "https://platform.openai.com/docs/api-reference/authentication", URLSAFE, 40),
    TokenPrefix(
        "npm_", "npm", "https://github.blog/changelog/2021-09-23-npm-has-a-new-access-token-format/", ALNUM, 30
    ),
    TokenPrefix("pypi-", "PyPI", "https://pypi.org/help/#apitoken", URLSAFE, 50),
    TokenPrefix("SK", "Twilio", "https://www.twilio.com/docs/iam/api-keys", HEX, 32),
    TokenPrefix(
        "SG.", "SendGrid", "https://www.twilio.com/docs/sendgrid/ui/account-and-settings/api-keys", URLSAFE + ".", 40
    ),
    TokenPrefix("hf_", "Hugging Face", "https://huggingface.co/docs/hub/security-tokens", ALNUM, 30),
    TokenPrefix("api_org_", "Hugging Face", "https://huggingface.co/docs/hub/security-tokens", ALNUM, 30),
    *(TokenPrefix(p, "DigitalOcean", _DIGITALOCEAN, ALNUM, 32) for p in ("dop_v1_", "doo_v1_", "dor_v1_")),
    *(TokenPrefix(p, "Shopify", _SHOPIFY, HEX, 32) for p in ("shpat_", "shpca_", "shppa_", "shpss_")),
    TokenPrefix(
        "ATATT",
        "Atlassian",
        "https://support.atlassian.com/atlassian-account/docs/manage-api-tokens-for-your-atlassian-account/",
        URLSAFE + "=",
        40,
    ),
    TokenPrefix("ATBB", "Atlassian", "https://support.atlassian.com/bitbucket-cloud/docs/app-passwords/", ALNUM, 28),
    TokenPrefix("dapi", "Databricks", "https://docs.databricks.com/en/dev-tools/auth/pat.html", HEX, 32),
    *(TokenPrefix(p, "HashiCorp Vault", _VAULT, URLSAFE, 24) for p in ("hvs.", "hvb.", "hvr.")),
    TokenPrefix(
        ".atlasv1.",
        "HashiCorp Terraform",
        "https://developer.hashicorp.com/terraform/cloud-docs/users-teams-organizations/api-tokens",
        URLSAFE + "=",
        40,
    ),
    *(
        TokenPrefix(p, "Doppler", _DOPPLER, ALNUM, 40)
        for p in ("dp.st.", "dp.pt.", "dp.ct.", "dp.sa.", "dp.said.", "dp.scim.", "dp.audit.")
    ),
    TokenPrefix(
        "glsa_", "Grafana", "https://grafana.com/docs/grafana/latest/administration/service-accounts/", ALNUM + "_", 32
    ),
    TokenPrefix(
        "glc_",
        "Grafana Cloud",
        "https://grafana.com/docs/grafana-cloud/account-management/authentication-and-permissions/access-policies/",
        BASE64,
        32,
    ),
    TokenPrefix("NRAK-", "New Relic", "https://docs.newrelic.com/docs/apis/intro-apis/new-relic-api-keys/", ALNUM, 27),
    TokenPrefix("sntrys_", "Sentry", _SENTRY, BASE64, 32),
    TokenPrefix("sntryu_", "Sentry", _SENTRY, HEX, 32),
    TokenPrefix(
        "PMAK-", "Postman", "https://learning.postman.com/docs/developer/postman-api/authentication/", HEX + r"\-", 24
    ),
    TokenPrefix("lin_api_", "Linear", "https://linear.app/developers/graphql", ALNUM, 32),
    TokenPrefix("ntn_", "Notion", "https://developers.notion.com/docs/authorization", ALNUM, 32),
    TokenPrefix("secret_", "Notion", "https://developers.notion.com/docs/authorization", ALNUM, 40),
    TokenPrefix("pul-", "Pulumi", "https://www.pulumi.com/docs/pulumi-cloud/access-management/access-tokens/", HEX, 40),
    TokenPrefix("bkua_", "Buildkite", "https://buildkite.com/docs/apis/managing-api-tokens", HEX, 40),
    TokenPrefix("AGE-SECRET-KEY-1", "age", "https://age-encryption.org/v1", UPPER_ALNUM, 40),
    TokenPrefix("tskey-", "Tailscale", "https://tailscale.com/kb/1085/auth-keys", ALNUM + r"\-", 20),
    *(TokenPrefix(p, "Square", _SQUARE, URLSAFE, 22) for p in ("sq0atp-", "sq0csp-")),
    TokenPrefix("sb_secret_", "Supabase", "https://supabase.com/docs/guides/api/api-keys", URLSAFE, 20),
    TokenPrefix("sbp_", "Supabase", "https://supabase.com/docs/guides/api/api-keys", HEX, 40),
    *(
        TokenPrefix(p, "PlanetScale", _PLANETSCALE, URLSAFE + ".", 32)
        for p in ("pscale_tkn_", "pscale_pw_", "pscale_oauth_")
    ),
    TokenPrefix("ops_", "1Password", "https://developer.1password.com/docs/service-accounts/", BASE64, 40),
    TokenPrefix("HRKU-", "Heroku", "https://devcenter.heroku.com/articles/authentication", URLSAFE, 30),
    TokenPrefix(
        "key-", "Mailgun", "https://documentation.mailgun.com/docs/mailgun/api-reference/authentication/", HEX, 32
    ),
    TokenPrefix(
        "dt0c01.",
        "Dynatrace",
        "https://docs.dynatrace.com/docs/manage/identity-access-management/access-tokens-and-oauth-clients/access-tokens",
        UPPER_ALNUM + ".",
        24,
    ),
    TokenPrefix(
        "AccountKey=",
        "Azure Storage",
        "https://learn.microsoft.com/en-us/azure/storage/common/storage-configure-connection-string",
        BASE64,
        40,
    ),
    TokenPrefix(
        "SharedAccessKey=",
        "Azure Service Bus",
        "https://learn.microsoft.com/en-us/azure/service-bus-messaging/service-bus-sas",
        BASE64,
        40,
    ),
    TokenPrefix(
        "discord.com/api/webhooks/",
        "Discord",
        "https://discord.com/developers/docs/resources/webhook",
        URLSAFE + "/",
        20,
    ),
    TokenPrefix(
        "PuTTY-User-Key-File-",
        "PuTTY",
        "https://the.earth.li/~sgtatham/putty/latest/htmldoc/AppendixC.html",
        "0-9:",  # the file's first line, "PuTTY-User-Key-File-3:", marks a private key as PEM's does
        2,
    ),
)


class KnownTokens:
    """Finds a token of any prefix in the table.

    One expression of every prefix, folded into a trie so that the engine skips
    ahead to a possible first character, finds where a prefix starts; only there
    are the tails of the entries starting with that character tried. A single
    alternation of the hundred full patterns costs about twenty times as much.
    """

    def __init__(self, entries: tuple[TokenPrefix, ...] = TOKEN_PREFIXES) -> None:
        # Only where no letter or digit comes before can a bounded prefix start: most
        # positions of a word are ruled out by the first test the engine makes there.
        bounded = _trie([entry.prefix for entry in entries if entry.bounded])
        free = _trie([entry.prefix for entry in entries if not entry.bounded])
        self._starts = re.compile(rf"(?<![A-Za-z0-9]){bounded}" + (f"|{free}" if free else ""))
        # Expressions, compiled (and cached by ``re``) on the first hit: a hit is rare, and
        # compiling a hundred at import would cost every start of the agent.
        self._by_first: dict[str, list[str]] = {}
        for entry in entries:
            self._by_first.setdefault(entry.prefix[0], []).append(entry.pattern())

    def search(self, text: str) -> bool:
        """Whether ``text`` holds a token of a known prefix."""
        for start in self._starts.finditer(text):
            position = start.start()
            if any(re.compile(pattern).match(text, position) for pattern in self._by_first[text[position]]):
                return True
        return False


def _trie(words: list[str]) -> str:
    """An expression matching any of ``words``, with shared beginnings written once."""
    branches: dict[str, list[str]] = {}
    ends = False
    for word in words:
        if word:
            branches.setdefault(word[0], []).append(word[1:])
        else:
            ends = True
    if not branches:
        return ""
    parts = [re.escape(first) + _trie(rests) for first, rests in sorted(branches.items())]
    body = parts[0] if len(parts) == 1 and not ends else "(?:" + "|".join(parts) + ")"
    return body + "?" if ends else body
