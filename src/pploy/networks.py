"""IP networks in configuration (trusted proxies, allowed networks), shared by pploy and gate."""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_networks(values: list[str]) -> list[str]:
    """A pydantic validator body: every item must be an IP network (CIDR or a single address)."""
    for item in values:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP network") from exc
    return values


def parse_networks(values: list[str]) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in values]


def address_in(address: str | None, networks: list[Network]) -> bool:
    """Whether ``address`` (IPv4, IPv6, IPv4-mapped IPv6, bracketed) is in one of ``networks``."""
    if not address or not networks:
        return False
    ip = _parse_address(address)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


@functools.lru_cache(maxsize=4096)
def _parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # Cached: gate asks several times per request about the same few peer addresses.
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip
