"""The sandbox hosts a session may use, in order: from ``--sandbox`` (a comma-separated list) or ``[sandbox] hosts``.

The first host that answers is used; the others are where the session fails over
to when it goes away. ``embedded`` names the embedded host (a child process of
tether), so a list may end with it as the last resort.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.options import EMBEDDED
from agent.permissions import SettingsError, read_settings_file
from agent.sandbox_client import SandboxError, parse_target

HOST_KEYS = ("url", "token", "token_file", "ca")
"""The keys of a host table in ``[sandbox] hosts``."""


class HostListError(ValueError):
    """A host list or one of its entries is malformed; the message names the entry and says why."""


@dataclass(frozen=True)
class HostSpec:
    """One sandbox host the session may use, with the credentials to call it."""

    url: str
    """``grpc://h:p``, ``grpcs://h:p``, ``unix:///path`` or ``embedded``."""
    token: str = ""
    """The bearer token ("" = none, or ``token_file``)."""
    token_file: str = ""
    """A file holding the bearer token (read when connecting, so a rotated token is picked up)."""
    ca_file: str = ""
    """The CA certificate that signed a grpcs:// host's certificate ("" = the system's)."""

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded host."""
        return self.url == EMBEDDED

    @property
    def label(self) -> str:
        """The host as the user named it (for notices, the status bar and the session log)."""
        return self.url

    def read_token(self) -> str:
        """The bearer token: ``token``, else the first word of ``token_file``; SandboxError if that cannot be read."""
        if self.token or not self.token_file:
            return self.token
        path = Path(self.token_file).expanduser()
        try:
            words = path.read_text().split()
        except OSError as exc:
            raise SandboxError(f"cannot read the token file {path} for {self.url}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise SandboxError(f"the token file {path} for {self.url} is not text") from None
        if not words:
            raise SandboxError(f"the token file {path} for {self.url} is empty")
        return words[0]


def check_spec(spec: HostSpec, where: str) -> HostSpec:
    """``spec`` if it is usable; HostListError naming ``where`` otherwise."""
    if spec.embedded:
        if spec.token or spec.token_file or spec.ca_file:
            raise HostListError(f"{where}: the embedded host takes no token or CA (it makes its own)")
        return spec
    try:
        _, tls = parse_target(spec.url)
    except SandboxError as exc:
        raise HostListError(f"{where}: {exc}") from None
    if spec.ca_file and not tls:
        raise HostListError(f"{where}: a CA is for a TLS host (grpcs://), but {spec.url} is not one")
    if spec.token and spec.token_file:
        raise HostListError(f"{where}: give a token or a token file, not both")
    return spec


def parse_host_list(text: str, *, token: str = "", ca_file: str = "") -> list[HostSpec]:
    """The hosts of ``--sandbox``: comma-separated; ``token`` and ``ca_file`` go with every remote entry.

    A CA goes only with the grpcs:// entries (it verifies TLS, and the others have none).
    """
    entries = [entry.strip() for entry in text.split(",")]
    if any(not entry for entry in entries):
        raise HostListError(f"--sandbox {text!r}: an empty entry (two commas in a row, or one at an end)")
    specs: list[HostSpec] = []
    for entry in entries:
        if entry == EMBEDDED:
            spec = HostSpec(EMBEDDED)
        else:
            spec = HostSpec(entry, token=token, ca_file=ca_file if entry.startswith("grpcs://") else "")
        specs.append(check_spec(spec, f"--sandbox entry {entry!r}"))
    if ca_file and not any(spec.url.startswith("grpcs://") for spec in specs):
        # Silently ignoring it would send the token in the clear to a host the user meant to verify.
        remote = [spec.url for spec in specs if not spec.embedded]
        if len(remote) == 1:
            address, _ = parse_target(remote[0])
            raise HostListError(
                f"--sandbox-ca is for a TLS host, but {remote[0]} is not one: use grpcs://{address.removeprefix('unix://')}"
            )
        raise HostListError(f"--sandbox-ca is for a TLS host, but no entry of --sandbox {text!r} is grpcs://")
    return _no_duplicates(specs, "--sandbox")


def load_host_settings(paths: list[Path]) -> list[HostSpec]:
    """``[sandbox] hosts`` from the settings files (the last file that sets it wins); [] if none does.

    An entry is a URL string, or a table ``{url, token, token_file, ca}``.
    """
    found: list[HostSpec] = []
    for path in paths:
        data = read_settings_file(path)
        if data is None:
            continue
        section = data.get("sandbox", {})
        if not isinstance(section, dict):
            raise SettingsError(f"{path}: [sandbox] must be a table")
        unknown = sorted(set(section) - {"hosts"})
        if unknown:
            raise SettingsError(f"{path}: unknown sandbox settings {', '.join(unknown)} (known: hosts)")
        if "hosts" not in section:
            continue
        hosts = section["hosts"]
        if not isinstance(hosts, list) or not hosts:
            raise SettingsError(f"{path}: sandbox.hosts must be a non-empty list of URLs or host tables")
        specs = []
        for index, entry in enumerate(hosts, 1):
            where = f"{path}: sandbox.hosts entry {index}"
            try:
                specs.append(check_spec(_spec_of(entry, where, path.parent), where))
            except HostListError as exc:
                raise SettingsError(str(exc)) from None
        try:
            found = _no_duplicates(specs, f"{path}: sandbox.hosts")
        except HostListError as exc:
            raise SettingsError(str(exc)) from None
    return found


def _spec_of(entry: object, where: str, base: Path) -> HostSpec:
    """The HostSpec an entry of ``[sandbox] hosts`` describes; relative files are read from ``base``."""
    if isinstance(entry, str):
        return HostSpec(entry.strip())
    if not isinstance(entry, dict):
        raise HostListError(f"{where}: must be a URL string or a table {{url = ..., token_file = ..., ca = ...}}")
    unknown = sorted(set(entry) - set(HOST_KEYS))
    if unknown:
        raise HostListError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(HOST_KEYS)})")
    for key in HOST_KEYS:
        if key in entry and not isinstance(entry[key], str):
            raise HostListError(f"{where}: {key} must be a string")
    if not entry.get("url"):
        raise HostListError(f"{where}: no url")

    def file(key: str) -> str:
        value = entry.get(key, "")
        return str(base / Path(value).expanduser()) if value else ""

    return HostSpec(
        entry["url"].strip(), token=entry.get("token", ""), token_file=file("token_file"), ca_file=file("ca")
    )


def _no_duplicates(specs: list[HostSpec], where: str) -> list[HostSpec]:
    seen: set[str] = set()
    for spec in specs:
        if spec.url in seen:
            raise HostListError(f"{where}: {spec.url} is listed twice")
        seen.add(spec.url)
    return specs
