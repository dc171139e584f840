#!/usr/bin/python3
"""A real SMTP server on loopback (aiosmtpd, from Debian's python3-aiosmtpd) for Waymark's
email sink: the demo and the end-to-end tests deliver to it and inspect what arrived.

Every accepted message is written to <maildir>/<n>.eml (n counts up) exactly as received.
Recipients whose local part starts with `reject` get a permanent `550` (to exercise the
sink's dead-letter path). Runs until SIGTERM/SIGINT.

    /usr/bin/python3 scripts/smtp-server.py --port 2525 --maildir .waymark/mail
"""

import argparse
import asyncio
import itertools
import signal
import sys
from pathlib import Path

from aiosmtpd.controller import Controller


class Maildir:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        start = len(list(self.root.glob("*.eml")))
        self.counter = itertools.count(start + 1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@", 1)[0].lower().startswith("reject"):
            return f"550 5.1.1 <{address}>: mailbox unavailable (rejected by the test server)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        path = self.root / f"{n:06}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(envelope.original_content or envelope.content)
        tmp.rename(path)
        print(f"smtp-server: {envelope.mail_from} -> {','.join(envelope.rcpt_tos)}: {path.name}",
              flush=True)
        return "250 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2525)
    p.add_argument("--maildir", required=True, type=Path)
    args = p.parse_args()
    # A fixed server name: the default looks up this machine's FQDN on every connection.
    controller = Controller(Maildir(args.maildir), hostname=args.host, port=args.port,
                            server_hostname="waymark-smtp.localhost")
    controller.start()
    print(f"smtp-server: listening on {args.host}:{args.port}, mail in {args.maildir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
