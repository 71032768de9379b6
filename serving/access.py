"""Who may use the server: the access rule, as one function over a request's method, path and headers, and
where the API key comes from.

The rule, stated once:
  * With an API key, every /v1 request needs `Authorization: Bearer KEY` (401 otherwise); the chat page
    itself loads without it and asks for the key, which stays in the browser.
  * Without a key, only requests addressed to a loopback name (Host localhost, 127.0.0.1, [::1], or a
    name given with --allow_host) are served, and a browser Origin must be one of those too (403
    otherwise): a web page the user visits cannot drive the model, by DNS rebinding included.
  * POSTs to /v1 must send `Content-Type: application/json` (415 otherwise), so a page cannot post to the
    server without the CORS preflight that this server never grants.
"""
import hmac
import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from serving.protocol import APIError, show

API_KEY_ENV = "MINIMIND_API_KEY"


def is_loopback(host: str) -> bool:
    """A host name (no port) that only this machine can be: localhost or a loopback address."""
    host = host.lower().rstrip(".").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name part of a Host header: "[::1]:8000" -> "::1", "localhost:8000" -> "localhost"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def normalise_hosts(names) -> frozenset:
    """--allow_host names in the form host_name gives them."""
    return frozenset(name.lower().rstrip(".").strip("[]") for name in names)


def check_access(method: str, path: str, headers, api_key: str | None, extra_hosts: frozenset) -> None:
    """Raise the APIError (401, 403 or 415) that the rule above gives this request; return when it may go on.
    `headers` is anything with .get(name) (Flask's request.headers, a dict)."""
    if api_key is None:
        def served(name: str) -> bool:
            return is_loopback(name) or name in extra_hosts

        # A page in the user's browser may reach this port (by DNS rebinding, under its own name).
        name = host_name(headers.get("Host", ""))
        if not served(name):
            raise APIError(403, f"Host {show(name)} is not served: without an API key this server answers "
                           "only loopback names (start it with --api_key, or --allow_host NAME)",
                           code="host_not_allowed")
        origin = headers.get("Origin")
        if origin is not None and not served(urlsplit(origin).hostname or ""):
            raise APIError(403, f"Origin {show(origin)} is not served: without an API key this server "
                           "answers only pages on loopback names", code="origin_not_allowed")
    if not path.startswith("/v1/"):
        return
    if api_key is not None:
        header = headers.get("Authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), api_key.encode()):
            what = "Incorrect API key provided" if given else "Missing API key: send 'Authorization: Bearer KEY'"
            raise APIError(401, what, code="invalid_api_key")
    content_type = headers.get("Content-Type") or ""
    if method == "POST" and content_type.split(";")[0].strip().lower() != "application/json":
        raise APIError(415, f"Content-Type must be application/json, got {show(content_type)}",
                       code="unsupported_media_type")


def resolve_api_key(args, environ=os.environ) -> str | None:
    """The key from --api_key, --api_key_file or $MINIMIND_API_KEY (in that order); None when none is set.
    Raises ValueError with a message for an unreadable or empty key file."""
    if args.api_key is not None:
        if not args.api_key:
            raise ValueError("--api_key is empty")
        return args.api_key
    if args.api_key_file is not None:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").strip().splitlines()
            key = lines[0].strip() if lines else ""
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--api_key_file {args.api_key_file}: cannot read it ({err})") from None
        if not key:
            raise ValueError(f"--api_key_file {args.api_key_file} holds no key")
        return key
    return environ.get(API_KEY_ENV) or None
