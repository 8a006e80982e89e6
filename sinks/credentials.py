"""Secrets for the upload sinks: given in the settings, in a file, or as a systemd credential.

Read once, at start. Errors are one line that names where the secret was looked
for, never the secret itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from agent.errors import ConfigError


def read_secret(
    value: SecretStr | None,
    path: Path | None,
    *,
    setting: str,
    what: str,
    credential: str | None = None,
    credentials_dir: str | None = None,
    required: bool = True,
) -> str | None:
    """The secret from ``value``, else the file ``path``, else the systemd credential ``credential``.

    ``setting`` is the dotted name of the value's setting (``sinks.central.token``);
    the file's setting is that name with ``_file``. The credential is looked up in
    ``credentials_dir`` (default ``$CREDENTIALS_DIRECTORY``). Nothing found is
    ``None``, or a :class:`ConfigError` when ``required``. The secret must be one
    printable ASCII word: it goes into an HTTP header.
    """
    if value is not None:
        secret, source = value.get_secret_value(), setting
    elif path is not None:
        source = f"{setting}_file"
        secret = _read_secret_file(path, source)
    else:
        directory = os.environ.get("CREDENTIALS_DIRECTORY") if credentials_dir is None else credentials_dir
        credential_path = Path(directory) / credential if directory and credential else None
        if credential_path is None or not credential_path.exists():
            if not required:
                return None
            where = f"set {setting} or {setting}_file"
            if credential:
                where += f", or the systemd credential {credential}"
            raise ConfigError(f"{setting.rsplit('.', 1)[0]}: no {what}: {where}")
        source = f"credential {credential}"
        secret = _read_secret_file(credential_path, source)
    secret = secret.strip()
    if not secret:
        raise ConfigError(f"{source}: the {what} is empty")
    if not secret.isascii() or not secret.isprintable() or any(c.isspace() for c in secret):
        raise ConfigError(f"{source}: the {what} holds whitespace or non-printable characters")
    return secret


def _read_secret_file(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source} {path}: not found") from None
    except PermissionError:
        raise ConfigError(f"{source} {path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"{source} {path}: is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source} {path}: not UTF-8 text") from None
    except OSError:
        raise ConfigError(f"{source} {path}: unreadable") from None
