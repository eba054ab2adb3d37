"""mailvault.toml validation: every error names the file, the key and the fix."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from mailvault.config import parse_config
from mailvault.errors import ConfigError
from mailvault.secrets import resolve_secret

GOOD = """
[accounts.journal]
host = "pop.example.com"
user = "journal@example.com"
password_env = "JOURNAL_PW"
"""


def test_defaults_follow_tls_mode() -> None:
    cfg = parse_config(Path("m.toml"), GOOD)
    acct = cfg.account("journal")
    assert (acct.port, acct.tls, acct.delete, acct.auth) == (995, "implicit", "never", "auto")
    cfg = parse_config(Path("m.toml"), GOOD + 'tls = "starttls"\n')
    assert cfg.account("journal").port == 110


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("prot = 1\n", "unknown key prot in [accounts.journal]"),
        (
            'tls = "ssl"\n',
            'tls = "ssl" is not allowed; use one of: "implicit" | "starttls" | "none"',
        ),
        ('port = "995"\n', 'port = "995" has the wrong type; it must be an integer'),
        ("port = 995.0\n", "port = 995.0 has the wrong type; it must be an integer"),
        ("retries = 1.0\n", "retries = 1.0 has the wrong type; it must be an integer"),
        ("timeout = nan\n", "timeout = nan has the wrong type; it must be a number"),
        ("timeout = inf\n", "timeout = inf has the wrong type; it must be a number"),
        ("timeout = 0\n", "timeout = 0 is out of range; it must be above 0 and at most 3600"),
        ("allow_plaintext_auth = 1\n", "it must be true or false"),
        ('delete = "always"\n', 'delete = "always" is not allowed'),
        ("delete = true\n", "delete = true is not allowed"),
        (
            'delete = "after-commit"\ndelete_after_days = 99999999999\n',
            "delete_after_days = 99999999999 is out of range; it must be at least 0 and at most",
        ),
        ('tls_fingerprint = "' + "ab" * 33 + '"\n', "64 hex digits, or 32 colon-separated pairs"),
        ('tls_fingerprint = "' + ":" * 64 + '"\n', "64 hex digits"),
        (
            'tls = "none"\nallow_plaintext_auth = true\ntls_fingerprint = "' + "ab" * 32 + '"\n',
            'sets tls_fingerprint but tls = "none"',
        ),
        ("[retention]\nkeep_days = 999999\n", "leave it out to keep mail for ever"),
        # 0 days would purge everything not held at the next `retention apply`
        (
            "[retention]\nkeep_days = 0\n",
            "retention.keep_days = 0 is out of range; it must be at least 1 and at most 36525 "
            "(0 would purge every message no hold protects",
        ),
        ("keep_days = 0\n", "keep_days = 0 is out of range; it must be at least 1"),
        ("[imports.old]\nkeep_days = 0\n", "imports.old.keep_days = 0 is out of range"),
        ('[accounts.""]\nhost = "h"\nuser = "u"\npassword_env = "X"\n', "an empty name"),
        ('password_file = "p\\u0000w"\n', "contains a NUL character"),
        ('password_command = "x"\n', "keep exactly one password source"),
        ('tls = "none"\n', "allow_plaintext_auth = true"),
        ("delete_after_days = 3\n", 'set delete = "after-commit"'),
    ],
)
def test_invalid_config_names_file_key_and_fix(extra: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(Path("/etc/m.toml"), GOOD + extra)
    message = str(err.value)
    assert message.startswith("/etc/m.toml: ")
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize("host", ["pop..example.com", ".x", "a" * 70 + ".example.com"])
def test_a_host_name_the_socket_layer_cannot_encode_is_a_config_error(host: str) -> None:
    text = re.sub(r'host = "[^"]*"', f'host = "{host}"', GOOD, count=1)
    with pytest.raises(ConfigError, match="is not a valid host name"):
        parse_config(Path("m.toml"), text)


def test_a_byte_order_mark_is_not_a_syntax_error() -> None:
    assert parse_config(Path("m.toml"), "\ufeff" + GOOD).account("journal")


def test_toml_syntax_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config(Path("m.toml"), "[accounts.x\n")


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="missing a required key: 'user'"):
        parse_config(Path("m.toml"), '[accounts.a]\nhost = "h"\npassword_env = "X"\n')


def test_unknown_account_lists_known() -> None:
    cfg = parse_config(Path("m.toml"), GOOD)
    with pytest.raises(ConfigError, match="configured: journal"):
        cfg.account("nope")


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_PW", "s3cret")
    assert resolve_secret(parse_config(Path("m.toml"), GOOD).account("journal")) == "s3cret"
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\nignored\n")
    os.chmod(secret_file, 0o644)
    text = GOOD.replace('password_env = "JOURNAL_PW"', f'password_file = "{secret_file}"')
    acct = parse_config(tmp_path / "m.toml", text).account("journal")
    with pytest.raises(ConfigError, match="chmod 600") as err:
        resolve_secret(acct)
    assert "from-file" not in str(err.value)
    os.chmod(secret_file, 0o600)
    assert resolve_secret(acct) == "from-file"
    text = GOOD.replace(
        'password_env = "JOURNAL_PW"', "password_command = \"printf 'cmd-pw\\\\n'\""
    )
    assert resolve_secret(parse_config(Path("m.toml"), text).account("journal")) == "cmd-pw"
    text = GOOD.replace('password_env = "JOURNAL_PW"', 'password_command = "echo leaked; exit 3"')
    with pytest.raises(ConfigError, match="exited with status 3") as err:
        resolve_secret(parse_config(Path("m.toml"), text).account("journal"))
    assert "leaked" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\xff\xfesecret\n"), "is not UTF-8 text"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"\nsecret\n"), "the password must be on the first line"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: os.mkfifo(p), "is not a regular file"),  # opening it blocked for ever
        (lambda p: p.write_bytes(b"x" * 100_000), "no line end in its first 65536 bytes"),
    ],
)
def test_an_unusable_password_file_is_a_config_error(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "pw"
    make(path)  # type: ignore[operator]
    os.chmod(path, 0o700 if path.is_dir() else 0o600)
    text = GOOD.replace('password_env = "JOURNAL_PW"', f'password_file = "{path}"')
    with pytest.raises(ConfigError, match=message) as err:
        resolve_secret(parse_config(tmp_path / "m.toml", text).account("journal"))
    assert "secret" not in str(err.value)


def test_a_config_file_not_utf8_names_the_fix(tmp_path: Path) -> None:
    from mailvault.config import load_config

    path = tmp_path / "mailvault.toml"
    path.write_bytes(GOOD.replace("journal@", "j\xe9@").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 \(byte \d+\); .* save it as UTF-8"):
        load_config(path)


def test_a_password_directory_open_to_others_is_named_a_directory(tmp_path: Path) -> None:
    """A 0755 directory was told to `chmod 600` itself."""
    path = tmp_path / "pw"
    path.mkdir(mode=0o755)
    text = GOOD.replace('password_env = "JOURNAL_PW"', f'password_file = "{path}"')
    with pytest.raises(ConfigError, match="is a directory; name the file"):
        resolve_secret(parse_config(tmp_path / "m.toml", text).account("journal"))


def test_a_password_ends_at_a_line_feed_only(tmp_path: Path) -> None:
    """``splitlines`` also ended lines at form feeds and other controls, which cut such a
    password short; a CRLF still ends the line."""
    path = tmp_path / "pw"
    path.write_bytes(b"pass\x0cword\x1dX\r\nsecond\n")
    os.chmod(path, 0o600)
    text = GOOD.replace('password_env = "JOURNAL_PW"', f'password_file = "{path}"')
    assert resolve_secret(parse_config(tmp_path / "m.toml", text).account("journal")) == (
        "pass\x0cword\x1dX"
    )


def test_a_password_env_not_utf8_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment variable holding bytes that are not UTF-8 ended in a traceback in
    `check` and "a bug in mailvault" in `fetch`."""
    monkeypatch.setitem(os.environb, b"JOURNAL_PW", b"secret\xff")
    with pytest.raises(ConfigError, match="JOURNAL_PW is not valid UTF-8") as err:
        resolve_secret(parse_config(Path("m.toml"), GOOD).account("journal"))
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("printf 'secret\\\\377\\\\n'", "printed is not UTF-8 text"),  # was turned into U+FFFD
        ("yes secret", "printed more than 65536 bytes and was stopped"),  # filled memory
    ],
)
def test_a_password_command_printing_garbage_is_a_config_error(command: str, message: str) -> None:
    text = GOOD.replace('password_env = "JOURNAL_PW"', f'password_command = "{command}"')
    started = time.monotonic()
    with pytest.raises(ConfigError, match=message) as err:
        resolve_secret(parse_config(Path("m.toml"), text).account("journal"))
    assert "secret" not in str(err.value) and time.monotonic() - started < 30


def test_a_password_command_runs_in_the_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``./getpw`` worked from the vault directory and failed (status 127) from cron."""
    script = tmp_path / "getpw"
    script.write_text("#!/bin/sh\necho from-script\n")
    script.chmod(0o700)
    monkeypatch.chdir("/")
    text = GOOD.replace('password_env = "JOURNAL_PW"', 'password_command = "./getpw"')
    account = parse_config(tmp_path / "mailvault.toml", text).account("journal")
    assert resolve_secret(account) == "from-script"


def test_no_vault_names_a_command_that_works(tmp_path: Path) -> None:
    """The hint for a missing vault is a command line that runs as written."""
    import shlex

    from click.testing import CliRunner

    import mailvault.cli.commands  # noqa: F401  (registers the commands)
    from mailvault.cli import cli

    root = tmp_path / "nowhere"
    result = CliRunner().invoke(cli, ["--vault", str(root), "fetch"])
    assert result.exit_code == 2
    hint = result.stderr.split("create one with `", 1)[1].split("`", 1)[0]
    argv = shlex.split(hint)
    assert argv[0] == "mailvault"
    assert CliRunner().invoke(cli, argv[1:]).exit_code == 0
    assert (root / "vault.json").exists()


def test_no_home_directory_is_a_usage_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HOME unset for a uid without a passwd entry (a container), no --vault: `verify` and
    `init` ended in a RuntimeError traceback, exit 1 (for verify: "found a problem"), and the
    search fast path looked for a vault under a literal `~`.  A relative XDG_DATA_HOME is
    ignored (XDG base directory specification)."""
    from click.testing import CliRunner

    import mailvault.cli.commands  # noqa: F401  (registers the commands)
    from mailvault.cli import cli
    from mailvault.search.command import fast_main
    from mailvault.vault import default_vault_path

    for name in ("HOME", "MAILVAULT_VAULT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no passwd entry either
    for args in (["verify"], ["init"], ["search", "word"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and "--vault" in result.stderr, result.stderr
    assert CliRunner().invoke(cli, ["verify", "--help"]).exit_code == 0
    assert fast_main(["search", "word"]) == 2
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_vault_path() == str(tmp_path / "mailvault")


def test_a_hung_password_command_gives_up_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell's child keeps the pipe open after the shell is killed (as gpg or a pinentry
    would): the time limit still holds, and the error names the file and the key."""
    import time

    from mailvault import secrets

    monkeypatch.setattr(secrets, "COMMAND_TIMEOUT", 0.5)
    text = GOOD.replace('password_env = "JOURNAL_PW"', 'password_command = "sleep 30 | cat"')
    acct = parse_config(tmp_path / "m.toml", text).account("journal")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        resolve_secret(acct)
    assert time.monotonic() - started < 20  # not the 30 s of the command
    assert str(err.value).startswith(f"{tmp_path / 'm.toml'}: accounts.journal: password_command")
    assert "did not finish within 0.5 s" in str(err.value)


def test_a_hung_password_command_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the time limit the shell's children (gpg, a pinentry; here a sleep) are killed
    with it, not left running for the command's full length."""
    import time

    from mailvault import secrets

    def running() -> bool:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x003171\x00":
                    return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")")[1][:3]
            except OSError:
                continue
        return False

    monkeypatch.setattr(secrets, "COMMAND_TIMEOUT", 0.5)
    text = GOOD.replace('password_env = "JOURNAL_PW"', 'password_command = "sleep 3171 | cat"')
    acct = parse_config(tmp_path / "m.toml", text).account("journal")
    with pytest.raises(ConfigError):
        resolve_secret(acct)
    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()


def test_a_password_command_that_leaves_a_child_running_returns_at_once(tmp_path: Path) -> None:
    """The shell printed the password and exited, but a child it started (an agent) still
    holds the pipe: the password is taken when the shell exits, not after the child."""
    import time

    text = GOOD.replace(
        'password_env = "JOURNAL_PW"', 'password_command = "(sleep 30 &); echo from-cmd"'
    )
    acct = parse_config(tmp_path / "m.toml", text).account("journal")
    started = time.monotonic()
    assert resolve_secret(acct) == "from-cmd"
    assert time.monotonic() - started < 20  # not the child's 30 s


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        ("pop.example.com:995", 'includes a port; set host = "pop.example.com" and port = 995'),
        ("[2001:db8::1]:110", 'set host = "2001:db8::1" and port = 110'),
        ("", "accounts.journal.host is empty; give it a value"),
    ],
)
def test_a_host_with_a_port_or_empty_says_what_to_write(host: str, needle: str) -> None:
    text = re.sub(r'host = "[^"]*"', f'host = "{host}"', GOOD, count=1)
    with pytest.raises(ConfigError) as err:
        parse_config(Path("/etc/m.toml"), text)
    assert str(err.value).startswith("/etc/m.toml: ") and needle in str(err.value)


@pytest.mark.parametrize("host", ["::1", "fe80::1", "pop.example.com"])
def test_a_bare_ipv6_address_is_not_taken_for_host_and_port(host: str) -> None:
    text = re.sub(r'host = "[^"]*"', f'host = "{host}"', GOOD, count=1)
    assert parse_config(Path("m.toml"), text).account("journal").host == host


def test_a_vault_path_that_is_not_utf8_is_refused_at_init(tmp_path: Path) -> None:
    """The search index (Tantivy) cannot open a path that is not UTF-8: init failed half way
    ("check the free space and the permissions"), and an import into that vault then stored
    mail that could never be searched."""
    import shutil

    from click.testing import CliRunner

    import mailvault.cli.commands  # noqa: F401  (registers the commands)
    from mailvault.cli import cli

    odd = tmp_path / "caf\udce9"
    result = CliRunner().invoke(cli, ["--vault", str(odd), "init"])
    assert result.exit_code == 2 and "is not a UTF-8 path" in result.stderr, result.output
    assert "caf\\xe9" in result.stderr and not odd.exists()
    good = tmp_path / "good"
    assert CliRunner().invoke(cli, ["--vault", str(good), "init"]).exit_code == 0
    shutil.rmtree(good / "index")
    good.rename(odd)  # a vault moved there later: its index cannot be made, and says why
    result = CliRunner().invoke(cli, ["--vault", str(odd), "index"])
    assert result.exit_code == 3 and "the vault's path is not UTF-8" in result.stderr
