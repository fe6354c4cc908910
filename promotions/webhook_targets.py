"""Where outbound webhooks may go: http(s) on the public internet, never inside our network.

A webhook URL is typed by a stage admin and the worker POSTs to it: without a check, it is a
way to make the worker reach loopback services, cloud metadata (169.254.169.254) or the private
network. URLs are checked when an endpoint is saved, and every address a delivery connects to
is checked again at that moment (a name may resolve elsewhere later: DNS rebinding).
`WEBHOOK_ALLOW_PRIVATE_NETWORKS=true` lifts the address check for deployments that deliver to
internal receivers on purpose.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings


class TargetRefused(OSError):
    """A webhook address inside our network, refused."""


def address_refusal(address: str) -> str:
    """Why a delivery may not go to `address` (an IP literal), or "" when it may."""
    kind = _inside_kind(address)
    return f"{address} is a {kind} address; webhooks go to public addresses only" if kind else ""


def _inside_kind(address: str) -> str:
    if settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        return ""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for refused, what in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
    ):
        if refused:
            return what
    return ""


def url_refusal(url: str) -> str:
    """Why an endpoint URL is refused at configuration time, or "" when it is accepted.

    A name that does not resolve yet is accepted: every delivery checks the addresses it
    connects to anyway.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "This is not a valid URL."
    if parts.scheme not in ("http", "https"):
        return "Webhooks are sent over http or https only."
    if not parts.hostname:
        return "The URL names no host."
    if parts.username or parts.password:
        return "Put no credentials in the URL: the signature authenticates each delivery."
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ""
    for *_, sockaddr in infos:
        if reason := address_refusal(sockaddr[0]):
            return f"{parts.hostname}: {reason}."
    return ""


def _checked_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """socket.create_connection, but only to addresses that pass the check."""
    host, port = address
    last_error: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if reason := address_refusal(sockaddr[0]):
            last_error = TargetRefused(reason if reason.startswith(host) else f"{host}: {reason}")
            continue
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error or OSError(f"{host} did not resolve")


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_CheckedHTTPConnection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_CheckedHTTPSConnection, req, context=self._context)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A receiver that redirects is misconfigured; following it would re-send the signed
    # body (or drop it, for POST→GET) somewhere nobody configured.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# No proxy handler: a delivery connects to the receiver itself, so the check sees its address.
opener = urllib.request.OpenerDirector()
for _handler in (
    _CheckedHTTPHandler(),
    _CheckedHTTPSHandler(),
    _NoRedirects(),
    urllib.request.HTTPDefaultErrorHandler(),
    urllib.request.HTTPErrorProcessor(),
    urllib.request.UnknownHandler(),
):
    opener.add_handler(_handler)
