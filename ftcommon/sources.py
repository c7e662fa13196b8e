"""Where a service may read from. A source (a path or a URL that a caller names) is first resolved to one
protocol and one location; only then is it checked against what the operator allowed: local files under
the configured roots (symlinks resolved first), and remote protocols (http, https, s3) only when enabled,
only for listed hosts, and never for loopback, link-local or private addresses unless their network is
listed too. fsspec's chained URLs (`simplecache::file://...`) are refused: each link would be a protocol
of its own to check, and none is needed to read a dataset, a model or a benchmark."""

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ftcommon.errors import InvalidArgument

LOCAL = "file"
REMOTE_PROTOCOLS = ("http", "https", "s3")
KNOWN_PROTOCOLS = (LOCAL, *REMOTE_PROTOCOLS)
# A scheme as RFC 3986 spells it; one letter is a Windows drive, not a scheme.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(.*)", re.DOTALL)
# `[::1]` in a URL is an address, not a chain.
_IPV6_LITERAL = re.compile(r"\[[0-9A-Fa-f:.%]*\]")
# Other names fsspec gives the same remote back ends.
_REMOTE_ALIASES = {"s3a": "s3"}

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SourcePolicy:
    """What the operator allows one service to read."""

    roots: tuple[Path, ...]
    protocols: frozenset[str] = frozenset({LOCAL})
    # Host names (s3: bucket names) a remote source may name, lower case.
    hosts: frozenset[str] = frozenset()
    # Non-public networks a listed host may still resolve to (e.g. an intranet file server).
    private_networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def build(
        cls,
        roots: list[Path],
        protocols: list[str] | None = None,
        hosts: list[str] | None = None,
        private_networks: list[str] | None = None,
    ) -> "SourcePolicy":
        """From settings values; raises ValueError (at start-up) for a protocol or network it cannot honour."""
        enabled = frozenset(p.lower() for p in (protocols or [LOCAL]))
        unknown = sorted(enabled - set(KNOWN_PROTOCOLS))
        if unknown:
            raise ValueError(f"unknown source protocols {unknown}; known: {', '.join(KNOWN_PROTOCOLS)}")
        return cls(
            roots=tuple(root.resolve() for root in roots),
            protocols=enabled,
            # An IPv6 host may be listed as in a URL, `[::1]`; urlsplit's hostname has no brackets.
            hosts=frozenset(h.lower().strip("[]") for h in hosts or []),
            private_networks=tuple(ipaddress.ip_network(n, strict=False) for n in private_networks or []),
        )


@dataclass(frozen=True)
class Source:
    protocol: str  # file | http | https | s3
    location: str  # the resolved absolute path, or the URL to fetch
    host: str = ""
    addresses: tuple[IpAddress, ...] = field(default=())

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def is_local(self) -> bool:
        return self.protocol == LOCAL


def resolve_source(text: str, policy: SourcePolicy, field_name: str) -> Source:
    """The one protocol and location `text` names, once it passed every check of `policy`.
    Raises InvalidArgument naming `field_name`; messages repeat only what the caller sent."""
    if not text:
        raise InvalidArgument("is required", field=field_name)
    if "::" in _IPV6_LITERAL.sub("", text):
        raise InvalidArgument(
            "chained URLs ('a::b') are not accepted; name one file or one URL", field=field_name
        )
    match = _SCHEME.fullmatch(text)
    if match is None:
        protocol, rest = LOCAL, text
    else:
        protocol, rest = _canonical_protocol(match[1], field_name), match[2]
    if protocol not in policy.protocols:
        enabled = ", ".join(sorted(policy.protocols)) or "none"
        raise InvalidArgument(
            f"protocol '{protocol}' is not enabled on this service (enabled: {enabled})", field=field_name
        )
    if protocol == LOCAL:
        return Source(LOCAL, str(_confined_path(text, _local_path(rest, field_name), policy, field_name)))
    return _remote(text, protocol, policy, field_name)


def confine_local_path(text: str, roots: tuple[Path, ...], field_name: str) -> Path:
    """A local file or folder under `roots` (model folders, benchmark files): no remote protocol at all."""
    return resolve_source(text, SourcePolicy(roots=roots), field_name).path


def _canonical_protocol(scheme: str, field_name: str) -> str:
    scheme = scheme.lower()
    if scheme in KNOWN_PROTOCOLS:
        return scheme
    if scheme in _REMOTE_ALIASES:
        return _REMOTE_ALIASES[scheme]
    try:
        # `local://` and any other name fsspec gives its local file system are plain files.
        if issubclass(fsspec.get_filesystem_class(scheme), LocalFileSystem):
            return LOCAL
    except (ValueError, ImportError):
        pass
    return scheme


def _local_path(rest: str, field_name: str) -> str:
    """The path of `file:` URL's remainder: `///abs`, `//localhost/abs` or `/abs`; a bare path as is."""
    if not rest.startswith("//"):
        return rest
    host, _, path = rest[2:].partition("/")
    if host not in ("", "localhost"):
        raise InvalidArgument(f"a file URL cannot name the host '{host}'", field=field_name)
    return "/" + path


def _confined_path(text: str, path_text: str, policy: SourcePolicy, field_name: str) -> Path:
    # resolve() follows every symlink, so a link inside a root that points outside it is caught here.
    path = Path(path_text).resolve()
    if not any(path.is_relative_to(root) for root in policy.roots):
        roots = ", ".join(map(str, policy.roots)) or "none configured"
        raise InvalidArgument(
            f"{text} is outside the allowed roots ({roots}); symlinks count where they point",
            field=field_name,
        )
    return path


def _remote(text: str, protocol: str, policy: SourcePolicy, field_name: str) -> Source:
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidArgument(f"{text} names no host", field=field_name)
    if host not in policy.hosts:
        raise InvalidArgument(f"host '{host}' is not in this service's allowed hosts", field=field_name)
    url = f"{protocol}://{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    if protocol == "s3":
        # The bucket is the host; the endpoint the S3 client contacts is the operator's configuration.
        return Source(protocol, url, host)
    addresses = _addresses(host, parts.port or (443 if protocol == "https" else 80), field_name)
    for address in addresses:
        if not address.is_global and not any(address in net for net in policy.private_networks):
            raise InvalidArgument(
                f"host '{host}' resolves to {address}, a loopback, link-local or private address "
                "this service may not fetch from",
                field=field_name,
            )
    return Source(protocol, url, host, addresses)


def _addresses(host: str, port: int, field_name: str) -> tuple[IpAddress, ...]:
    """Every address the host resolves to: one private among public ones is enough to refuse."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidArgument(f"host '{host}' does not resolve", field=field_name) from None
    found = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        found.append(address)
    return tuple(dict.fromkeys(found))
