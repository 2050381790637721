"""The gateway process: ``python -m serving.gateway [--host H] [--port P]`` (uvicorn underneath).

It refuses to listen beyond loopback without API keys: an address other machines reach, with
``LIFECYCLE_API_KEYS`` empty, would serve every model, job and log to anyone on the network. Behind a
proxy that authenticates, ``LIFECYCLE_ALLOW_OPEN_GATEWAY=true`` says so explicitly.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from lifecycle.settings import Settings, load_settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: reachable from elsewhere
        return False


def exposure_error(settings: Settings, host: str) -> str | None:
    """Why the gateway may not listen on ``host`` with these settings, or None."""
    if is_loopback(host) or settings.api_keys or settings.allow_open_gateway:
        return None
    return (f"refusing to listen on {host} without API keys: set LIFECYCLE_API_KEYS (comma-separated), or "
            "LIFECYCLE_ALLOW_OPEN_GATEWAY=true when a proxy in front authenticates, or bind 127.0.0.1")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m serving.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.gateway_port)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    error = exposure_error(settings, args.host)
    if error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run("serving.gateway.app:app_from_env", factory=True, host=args.host, port=args.port,
                log_level=args.log_level)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
