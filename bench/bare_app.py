"""The baseline for bench/feedback_rps.py: Falcon on waitress doing nothing but answer 200.

Same framework, same server and same thread count as the service, so the ratio measures
what the service adds per feedback (auth, validation, redaction, ownership check, an fsync'd
file), not the framework.
"""

from __future__ import annotations

import sys

import falcon
import waitress


class Feedback:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.bounded_stream.read()
        resp.media = {"response": "feedback received"}


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    app = falcon.App()
    app.add_route("/v1/feedback", Feedback())
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
    print(f"listening on http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
