"""A Cloud Storage emulator for gs:// workdirs without a network: tests and manual runs.

The real clients talk to it over HTTP on localhost: gcsfs (our files, through fsspec) once
STORAGE_EMULATOR_HOST names it, TensorStore (Orbax's checkpoint arrays) once
TENSORSTORE_GCS_HTTP_URL does, with a fixed test token instead of credentials. The emulator is
gcp-storage-emulator (the test extra), in memory.

    python tests/gcs_emulator.py --port 9023 --bucket bossnas-demo    # serves until killed
    export STORAGE_EMULATOR_HOST=http://localhost:9023 \\
        TENSORSTORE_GCS_HTTP_URL=http://localhost:9023 GOOGLE_AUTH_TOKEN_FOR_TESTING=emulator \\
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
    python launch/train_blocks.py --config configs/hytra.py:demo --workdir gs://bossnas-demo/demo
"""

import argparse
import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
from http import server as http_server

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

ENV = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
       # No storage-layout API here: gcsfs's zonal/hierarchical bucket check would fail and warn
       # at every call. Read when gcsfs is imported.
       "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


def _download(request, response, storage, *args, **kwargs):
  """The emulator's download, plus the object's generation in x-goog-generation, as Cloud Storage
  sends it. TensorStore reads OCDBT manifests by generation: without the header a checkpoint
  save or restore failed now and then ("Malformed StorageGeneration"; 1 to 4 saves in 15)."""
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    pass
  else:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  return _emulator_download(request, response, storage, *args, **kwargs)


# Both routes to a download: the handler table, and objects.get (its `alt=media`).
_emulator_download = objects.download
if _emulator_download is not _download:
  objects.download = _download
  emulator.HANDLERS = tuple(
      (pattern, {m: _download if h is _emulator_download else h for m, h in handlers.items()})
      for pattern, handlers in emulator.HANDLERS)


def _serving_thread(host: str, port: int, storage):
  """The emulator's server thread, accepting every connection at once.

  Its own thread serves one connection at a time from a listen queue of 5, and TensorStore opens
  dozens at once. Here each connection gets a thread, and requests are still handled one at a
  time, because the emulator's storage is not thread-safe.
  """
  lock = threading.Lock()

  def locked(serve, handler):
    with lock:
      serve(handler)

  class Handler(emulator.RequestHandler):
    pass

  for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    serve = getattr(emulator.RequestHandler, f"do_{method}")
    setattr(Handler, f"do_{method}", lambda self, serve=serve: locked(serve, self))

  class HTTPServer(http_server.ThreadingHTTPServer):
    request_queue_size = 256

    def handle_error(self, request, client_address):
      # gcsfs asks for an object and for a listing under its name at once and hangs up on the
      # slower answer: that is not an error.
      if not isinstance(sys.exc_info()[1], ConnectionError):
        super().handle_error(request, client_address)

  class Thread(emulator.APIThread):
    def run(self):
      self._httpd = HTTPServer((self._host, self._port), functools.partial(Handler, self._storage))
      self.is_running.set()
      self._httpd.serve_forever()

  return Thread(host, port, storage, daemon=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serving(bucket: str, port: int | None = None):
  """Serves an empty bucket in this process; sets the clients' environment variables (child
  processes inherit them) and restores them on exit. Yields 'gs://<bucket>'."""
  port = port or free_port()
  server = emulator.create_server("localhost", port, in_memory=True, default_bucket=bucket)
  server._api = _serving_thread("localhost", port, server._storage)  # noqa: SLF001
  logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
  server.start()
  url = f"http://localhost:{port}"
  saved = {k: os.environ.get(k) for k in ENV}
  os.environ.update(dict(zip(ENV, (url, url, "emulator", "false"))))
  try:
    yield f"gs://{bucket}"
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, default=9023)
  parser.add_argument("--bucket", default="bossnas-demo")
  args = parser.parse_args()
  with serving(args.bucket, args.port) as url:
    print(f"serving {url} at http://localhost:{args.port}", flush=True)
    while True:
      time.sleep(3600)
