"""``python -m course_utils.demo``: serve the course's demo on 127.0.0.1 (``make demo``; ``SMOKE=1`` for the tiny models).

The password is made up and printed at start, or taken from ``DEMO_PASSWORD`` (at least 12 characters; then it is
never printed); it is never a command-line flag, because every user of the machine can read a process's command
line. The app speaks plain HTTP, so it refuses an address other machines can reach unless ``--allow-remote`` says
you mean it (an SSH tunnel is the better way to share it).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("DEMO_HOST", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="serve on a --host other machines can reach, over plain HTTP (the password and uploads "
                             "cross the network unencrypted; prefer an SSH tunnel)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "7860")), help="port (default 7860)")
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE", "0") == "1",
                        help="serve the tiny offline models on the CPU (SMOKE=1 in the environment does the same)")
    parser.add_argument("--artefacts-dir", default=None,
                        help="where the lessons left your adapters and checkpoints (default: the course cache)")
    args = parser.parse_args(argv)

    if not is_loopback(args.host) and not args.allow_remote:
        print(f"Refusing to serve on {args.host} over plain HTTP, where the password and every upload would cross the "
              "network unencrypted: share it with an SSH tunnel (ssh -L 7860:127.0.0.1:7860 this-machine), or pass "
              "--allow-remote if you mean it.", file=sys.stderr)
        return 2

    from course_utils.core.errors import CourseError
    from course_utils.core.gpu import choose_device
    from course_utils.demo.app import USER, build_app, new_password

    try:
        password = new_password()
    except CourseError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        # full mode serves 7-8B models in 4-bit: without a suitable GPU, one sentence (ending with the smoke hint)
        choose_device(args.smoke, min_vram_gb=8, why="serving 7-8B models in 4-bit")
    except CourseError as err:
        print(f"{err} For the demo: SMOKE=1 make demo.", file=sys.stderr)
        return 2

    import uvicorn

    from course_utils.demo.tabs import Demo

    demo = Demo(smoke=args.smoke, artefacts_dir=args.artefacts_dir)
    app = build_app(demo, password)
    host = "127.0.0.1" if args.host in ("localhost", "") else args.host
    print(f"Course demo ({'smoke mode: tiny random models' if args.smoke else 'full mode'}) on http://{host}:{args.port}/",
          flush=True)
    if not is_loopback(host):
        print(f"  warning: {host} is reachable from other machines, over plain HTTP (--allow-remote)", flush=True)
    shown = "the one in DEMO_PASSWORD" if os.environ.get("DEMO_PASSWORD") else password  # never echo a chosen one
    print(f"  log in as: {USER}   password: {shown}", flush=True)
    print(f"  HTTP API: Authorization: Bearer <password>  (GET /api/status, POST /api/chat)", flush=True)
    for name in demo.manager.specs:
        print(f"  {name:<9} {demo.source(name)}", flush=True)
    # proxy_headers=False: the failed-login limit counts the connection's address, not an X-Forwarded-For anyone can send
    uvicorn.run(app, host=host, port=args.port, log_level="warning", server_header=False, proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
