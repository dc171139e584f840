#!/usr/bin/env python3
"""A stand-in for the HTTP APIs Waymark's sinks call — an SMS provider's Twilio-shaped
Messages API (`waymark sink sms`) and a contact center's task webhook (`waymark sink
contact-center`) — for tests and demos. It is NOT a provider: nothing is sent or created.

POST <anything> with a JSON body (a contact-center task): logged as "json"; 201, or 409 for a
task_id seen before (the task exists).

POST /2010-04-01/Accounts/<sid>/Messages.json with form fields To, From, Body:
  * every request is appended to --log as one JSON line (path, headers, form, status);
  * the first --fail-first requests get 503 (to exercise retries);
  * a `To` starting with --reject-prefix gets 400 with a provider-style error body;
  * a repeated Idempotency-Key gets the first answer again and sends nothing new
    (`"replay": true` in the log), as a provider honouring idempotency keys does;
  * otherwise 201 with {"sid": "SM…", "status": "queued"}.

    python3 scripts/provider-standin.py --port 8025 --log .waymark/sms.jsonl
"""

import argparse
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8025)
    p.add_argument("--log", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--reject-prefix", default="+1555")
    args = p.parse_args()
    lock = threading.Lock()
    state = {"requests": 0, "answers": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length).decode()
            is_json = self.headers.get("Content-Type", "").startswith("application/json")
            data = json.loads(raw) if is_json else None
            form = {} if is_json else {k: v[0] for k, v in parse_qs(raw).items()}
            key = self.headers.get("Idempotency-Key")
            with lock:
                state["requests"] += 1
                replay = key in state["answers"]
                if replay:
                    status, body = state["answers"][key]
                elif state["requests"] <= args.fail_first:
                    status, body = 503, {"code": 20503, "message": "Service unavailable (stand-in)"}
                elif is_json:
                    tid = data.get("task_id")
                    seen = state.setdefault("tasks", set())
                    status, body = (409, {"message": "task exists"}) if tid in seen else \
                        (201, {"id": tid, "status": "open"})
                    seen.add(tid)
                elif not self.path.endswith("/Messages.json"):
                    status, body = 404, {"code": 20404, "message": "not found"}
                elif form.get("To", "").startswith(args.reject_prefix):
                    status, body = 400, {"code": 21211,
                                         "message": f"The 'To' number {form.get('To')} is not valid."}
                else:
                    status, body = 201, {"sid": "SM" + uuid.uuid4().hex, "status": "queued"}
                if key and status < 500 and not replay:
                    state["answers"][key] = (status, body)
                with open(args.log, "a") as f:
                    f.write(json.dumps({"path": self.path, "headers": dict(self.headers),
                                        "form": form, "json": data, "status": status,
                                        "replay": replay}) + "\n")
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"provider-standin: listening on {args.host}:{args.port}, log {args.log}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
