"""The operator's inputs to harden: from options or a TOML file, checked before any change.

Security: every value is checked here, before a plan is made: host and domain names
against the DNS name syntax (so no value can carry a space, comma or newline into main.cf),
the SASL type against a closed list, certificate and key files by reading them (bounded)
and checking that the key belongs to the certificate. A bad value is one error line naming
the option or the file and key; nothing has been changed at that point.
Standards: RFC 1035 2.3.1 / RFC 1123 2.1 (host name syntax); RFC 7468 (PEM);
postconf(5) smtpd_sasl_type.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from postwarden.audit.certs import public_bytes
from postwarden.audit.fixes import EXTRAS, INPUT_KEYS, SASL_TYPES, Inputs
from postwarden.errors import ConfigError, UsageError

MAX_PEM = 1024 * 1024
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def _check_name(where: str, value: str) -> str:
    labels = value.rstrip(".").split(".")
    if (len(value) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels)
            or labels[-1].isdigit()):
        raise UsageError(f"{where}: {value!r} is not a fully qualified domain name")
    return value.rstrip(".").lower()


def _read_pem(where: str, path: str) -> bytes:
    file = Path(path)
    if not file.is_absolute():
        raise UsageError(f"{where}: {path}: give an absolute path (Postfix resolves relative "
                         "names from its own working directory)")
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_PEM + 1)
    except FileNotFoundError:
        raise UsageError(f"{where}: {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{where}: {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM:
        raise UsageError(f"{where}: {path}: larger than {MAX_PEM} bytes; not a PEM file")
    return data


def _check_tls(cert_path: str | None, key_path: str | None) -> None:
    cert = key = None
    if cert_path is not None:
        try:
            cert = x509.load_pem_x509_certificates(_read_pem("--tls-cert", cert_path))[0]
        except ValueError:
            raise UsageError(f"--tls-cert: {cert_path}: no PEM certificate in it") from None
    if key_path is not None:
        try:
            key = serialization.load_pem_private_key(_read_pem("--tls-key", key_path), None)
        except (ValueError, TypeError):
            raise UsageError(f"--tls-key: {key_path}: no unencrypted PEM private key in it "
                             "(Postfix cannot ask for a passphrase)") from None
    if cert is not None and key is not None and public_bytes(cert) != public_bytes(key):
        raise UsageError(f"--tls-key: {key_path} is not the key of the certificate "
                         f"{cert_path}")


def read_file(path: Path) -> dict[str, Any]:
    """The settings of a TOML file: the input keys and ``with`` (a list)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except OSError as exc:
        raise ConfigError(path, None, exc.strerror or "cannot read") from None
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(path, line, f"not valid TOML: {exc}") from None
    for key, value in data.items():
        if key not in (*INPUT_KEYS, "with"):
            known = ", ".join((*INPUT_KEYS, "with"))
            raise ConfigError(path, None, f"unknown key {key!r} (known: {known})")
        if key == "with":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(path, None, "key 'with': a list of strings, e.g. "
                                  '["policy", "milter"]')
        elif not isinstance(value, str):
            raise ConfigError(path, None, f"key {key!r}: a string")
    return data


def build(options: dict[str, Any], file: Path | None = None) -> Inputs:
    """Inputs from the command line, falling back to the settings file; all checked."""
    values: dict[str, Any] = read_file(file) if file is not None else {}
    for key in INPUT_KEYS:
        if options.get(key) is not None:
            values[key] = options[key]
    extras = set(values.get("with", [])) | set(options.get("with") or [])
    for extra in extras:
        if extra not in EXTRAS:
            raise UsageError(f"--with: unknown service {extra!r} (choose from "
                             f"{', '.join(EXTRAS)})")
    hostname = values.get("hostname")
    domain = values.get("domain")
    sasl = values.get("sasl")
    if hostname is not None:
        hostname = _check_name("--hostname", hostname)
    if domain is not None:
        domain = _check_name("--domain", domain)
    if sasl is not None and sasl not in SASL_TYPES:
        raise UsageError(f"--sasl: {sasl!r} (choose from {', '.join(SASL_TYPES)})")
    _check_tls(values.get("tls-cert"), values.get("tls-key"))
    return Inputs(hostname=hostname, domain=domain, tls_cert=values.get("tls-cert"),
                  tls_key=values.get("tls-key"), sasl=sasl, extras=frozenset(extras))
