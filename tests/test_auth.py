"""Optional dashboard access control: password hashing, policy choice, and the page gate (AppTest)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dashboard import auth
from model_zoo.errors import InputError

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
FAST = 1_000  # iterations for tests; production default is auth.DEFAULT_ITERATIONS


# ----------------------------------------------------------------------------- hashing


def test_hash_matches_independent_pbkdf2_and_verifies():
    salt = bytes(range(16))
    encoded = auth.hash_password("correct horse", salt=salt, iterations=FAST)
    expected = hashlib.pbkdf2_hmac("sha256", b"correct horse", salt, FAST).hex()
    assert encoded == f"pbkdf2_sha256${FAST}${salt.hex()}${expected}"
    assert auth.verify_password("correct horse", encoded)
    assert not auth.verify_password("correct horse ", encoded)
    assert not auth.verify_password("", encoded)


def test_each_hash_gets_a_fresh_salt():
    a, b = (auth.hash_password("pw", iterations=FAST) for _ in range(2))
    assert a != b and auth.verify_password("pw", a) and auth.verify_password("pw", b)


@pytest.mark.parametrize(
    "encoded, words",
    [
        ("plaintext-password", "not of the form"),
        ("md5$1$00$00", "not of the form"),
        ("pbkdf2_sha256$many$00ff$" + "00" * 32, "non-numeric"),
        ("pbkdf2_sha256$1000$zz$" + "00" * 32, "non-hex"),
        ("pbkdf2_sha256$1000$00ff$00", "incomplete"),
        ("pbkdf2_sha256$0$00ff$" + "00" * 32, "incomplete"),
    ],
)
def test_malformed_hash_is_refused_with_a_reason(encoded, words):
    with pytest.raises(InputError, match=words):
        auth.verify_password("x", encoded)


def test_empty_password_cannot_be_hashed():
    with pytest.raises(InputError, match="empty"):
        auth.hash_password("")


# ----------------------------------------------------------------------------- policy


def test_policy_open_when_nothing_configured():
    assert auth.access_policy({}, environ={}).mode == "none"


def test_policy_password_from_secrets_or_environment():
    encoded = auth.hash_password("pw", iterations=FAST)
    assert auth.access_policy({"dashboard": {"password_hash": encoded}}, environ={}) == auth.AccessPolicy(
        "password", password_hash=encoded
    )
    assert auth.access_policy({}, environ={auth.PASSWORD_ENV: encoded}).password_hash == encoded


def test_policy_oidc_wins_and_picks_the_provider():
    base = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "s"}
    assert auth.access_policy({"auth": {**base, "client_id": "c"}}, environ={}) == auth.AccessPolicy("oidc")
    named = {
        "auth": {**base, "microsoft": {"client_id": "c"}},
        "dashboard": {"password_hash": auth.hash_password("pw", iterations=FAST)},
    }
    assert auth.access_policy(named, environ={}) == auth.AccessPolicy("oidc", provider="microsoft")


def test_broken_settings_fail_closed_with_a_reason():
    with pytest.raises(InputError, match="cookie_secret"):
        auth.access_policy({"auth": {"redirect_uri": "http://x/oauth2callback"}}, environ={})
    with pytest.raises(InputError, match="not of the form"):
        auth.access_policy({}, environ={auth.PASSWORD_ENV: "hunter2"})


def test_cli_prints_a_verifiable_hash(monkeypatch, capsys):
    answers = iter(["s3cret", "s3cret"])
    monkeypatch.setattr(auth.getpass, "getpass", lambda prompt="": next(answers))
    assert auth.main([]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("password_hash")][0]
    assert auth.verify_password("s3cret", line.split('"')[1])
    answers = iter(["a", "b"])
    assert auth.main([]) == 1


# ----------------------------------------------------------------------------- page gate


@pytest.fixture()
def app_env(tiny_release, monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_ZOO_DIR", str(tiny_release["release"]))
    monkeypatch.setenv("MODEL_ZOO_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)


def _app(secrets: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=180)
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    return at


def _sign_in_button(at):
    return [b for b in at.button if b.label == "Sign in"][0]


def test_open_by_default_shows_the_case_page(app_env):
    at = _app().run()
    assert not at.exception
    assert not [t for t in at.text_input if t.label == "Password"]
    assert at.file_uploader, "the Case page's upload widget is shown without sign-in"


def test_password_gate_blocks_until_the_right_password(app_env):
    encoded = auth.hash_password("open sesame", iterations=FAST)
    at = _app({"dashboard": {"password_hash": encoded}}).run()
    assert not at.exception
    assert not at.file_uploader, "nothing of the app is shown before sign-in"
    at.text_input[0].input("wrong")
    _sign_in_button(at).click().run()
    assert "Wrong password." in [e.value for e in at.error]
    assert not at.file_uploader
    at.text_input[0].input("open sesame")
    _sign_in_button(at).click().run()
    assert not at.exception and not at.error
    assert at.file_uploader, "the Case page appears after the right password"
    assert any(b.label == "Sign out" for b in at.sidebar.button)


def test_password_gate_from_environment(app_env, monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_ENV, auth.hash_password("pw", iterations=FAST))
    at = _app().run()
    assert [t for t in at.text_input if t.label == "Password"] and not at.file_uploader


def test_oidc_configured_shows_only_sign_in(app_env):
    secrets = {
        "auth": {
            "redirect_uri": "http://localhost:8501/oauth2callback",
            "cookie_secret": "x" * 32,
            "client_id": "id",
            "client_secret": "secret",
            "server_metadata_url": "https://login.example.org/.well-known/openid-configuration",
        }
    }
    at = _app(secrets).run()
    assert not at.exception
    assert [b for b in at.button if b.label == "Sign in"]
    assert not at.file_uploader


def test_misconfigured_access_fails_closed(app_env, monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_ENV, "hunter2")
    at = _app().run()
    assert not at.exception
    assert any("misconfigured" in e.value for e in at.error)
    assert not at.file_uploader and not at.text_input


def test_unreadable_secrets_file_fails_closed_but_absent_file_is_open(monkeypatch, tmp_path):
    """Streamlit raises the same error for a missing and a malformed secrets.toml; only the
    missing one may mean "not configured"."""
    from dashboard import common

    class Unreadable:
        def to_dict(self):
            raise RuntimeError("toml parse error")

    broken = tmp_path / "secrets.toml"
    monkeypatch.setattr(common.st, "secrets", Unreadable())
    monkeypatch.setattr(common.st, "get_option", lambda name: [str(broken)])
    assert common.secrets_dict() == {}
    broken.write_text("[auth\\nredirect_uri = ")
    with pytest.raises(InputError, match="could not read .*secrets.toml"):
        common.secrets_dict()
