"""An HTTP reverse proxy on 127.0.0.1 that injects a real network's faults between the
clients of a run directory (gcsfs, TensorStore) and the GCS emulator (gcs_emulator.py).

Each request draws, in arrival order, from one seeded random stream:

    failed     answered `503 Service Unavailable` (a JSON error body), not forwarded
    reset      the connection aborted: half of these before forwarding (the request is
               lost), half after the emulator answered, with part of the body sent (the
               request took effect; its answer is lost)
    delayed    held for `delay_seconds` (uniform) before it is forwarded
    forwarded  everything that reaches the emulator (delayed ones and late resets too)
    killed     `arm_kill(pid, k)`: the k-th request from then on SIGKILLs process `pid`
               before it is forwarded (a run killed at a random point of its I/O)

Forwarded requests keep their method, path, query, headers and body (read whole first,
so a delayed or reset request has fully arrived); answers are streamed back unchanged
(compressed bodies stay compressed), with the emulator's URL in a
resumable upload's `Location` rewritten to the proxy's. One answer is GCS's, not the
emulator's: a resumable upload's final chunk sent again after its answer was lost (a late
reset, then the client's retry) gets the upload's object again where fake-gcs-server, which
forgets finished uploads, says 404. `counts` can be read at any time.
The proxy runs in a daemon thread and stops by itself after `lifetime` seconds.
"""
import asyncio
import collections
import json
import logging
import os
import random
import signal
import threading

import aiohttp
from aiohttp import web

_HOP_BY_HOP = frozenset({'connection', 'keep-alive', 'proxy-authenticate',
                         'proxy-authorization', 'te', 'trailers', 'transfer-encoding',
                         'upgrade', 'host', 'content-length'})
_UNAVAILABLE = json.dumps({'error': {'code': 503, 'message': 'injected fault: service '
                                     'unavailable, try again'}}).encode()


class _DropAbortedWrites(logging.Filter):
  """aiohttp's server logs a traceback for each answer to a connection the proxy aborted."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, ConnectionResetError)


class FaultProxy:
  """`FaultProxy(target).url` forwards to `target` (http://127.0.0.1:port) with faults.

  `fail`, `reset`, `delay`: the fraction of requests answered 503, aborted, delayed.
  `start()` returns once the proxy listens; `stop()` ends it (or `lifetime` runs out)."""

  def __init__(self, target: str, seed: int = 0, fail: float = 0.05, reset: float = 0.02,
               delay: float = 0.03, delay_seconds=(1.0, 3.0), lifetime: float = 900.0):
    if not target.startswith('http://127.0.0.1:'):
      raise ValueError(f'the proxy forwards to loopback addresses only, not {target}')
    self.target = target.rstrip('/')
    self.fail, self.reset, self.delay = fail, reset, delay
    self.delay_seconds = delay_seconds
    self.lifetime = lifetime
    self._random = random.Random(seed)
    self._kill = None              # [pid, requests left before the kill]
    self._finished_uploads = {}    # upload_id -> (status, headers, body) of its last chunk
    self._lock = threading.Lock()
    self.counts = collections.Counter()
    self.url = None
    self._loop = self._thread = self._stopped = None

  # --- fault decisions ---------------------------------------------------------------------

  def arm_kill(self, pid: int, after_requests: int):
    """SIGKILLs `pid` when the `after_requests`-th request from now arrives (that request
    is dropped); `disarm_kill()` undoes it."""
    with self._lock:
      self._kill = [pid, after_requests]

  def disarm_kill(self):
    with self._lock:
      self._kill = None

  def set_rates(self, fail: float, reset: float, delay: float):
    with self._lock:
      self.fail, self.reset, self.delay = fail, reset, delay

  def _draw(self):
    """('kill' | 'fail' | 'reset_before' | 'reset_after' | 'delay' | 'pass', seconds),
    counted."""
    with self._lock:
      self.counts['requests'] += 1
      if self._kill is not None:
        self._kill[1] -= 1
        if self._kill[1] <= 0:
          try:
            os.kill(self._kill[0], signal.SIGKILL)
          except ProcessLookupError:
            pass      # it ended by itself
          self._kill = None
          self.counts['killed'] += 1
          return 'kill', 0.0
      roll = self._random.random()
      if roll < self.fail:
        self.counts['failed'] += 1
        return 'fail', 0.0
      roll -= self.fail
      if roll < self.reset:
        self.counts['reset'] += 1
        return ('reset_before' if self._random.random() < 0.5 else 'reset_after'), 0.0
      roll -= self.reset
      if roll < self.delay:
        self.counts['delayed'] += 1
        return 'delay', self._random.uniform(*self.delay_seconds)
      return 'pass', 0.0

  def snapshot(self) -> dict:
    with self._lock:
      return dict(self.counts)

  # --- the server --------------------------------------------------------------------------

  async def _handle(self, request: web.Request):
    fault, seconds = self._draw()
    body = await request.read()
    if fault == 'fail':
      return web.Response(status=503, body=_UNAVAILABLE, content_type='application/json')
    if fault in ('kill', 'reset_before'):
      request.transport.abort()
      return web.Response(status=503)    # never sent: the connection is gone
    if fault == 'delay':
      await asyncio.sleep(seconds)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    async with self._session.request(request.method, self.target + request.rel_url.raw_path_qs,
                                     headers=headers, data=body,
                                     allow_redirects=False) as answer:
      with self._lock:
        self.counts['forwarded'] += 1
      status, headers = answer.status, self._answer_headers(answer)
      upload_id = request.query.get('upload_id')
      if not upload_id:
        return await self._send(request, fault, status, headers, answer.content_length,
                                answer.content.iter_chunked(1 << 16))
      data = await answer.read()     # a resumable upload's chunk: a short answer
    if status in (200, 201):
      self._finished_uploads[upload_id] = (status, headers, data)
    elif status == 404 and upload_id in self._finished_uploads:
      status, headers, data = self._finished_uploads[upload_id]
    return await self._send(request, fault, status, headers, len(data), _chunks(data))

  def _answer_headers(self, answer) -> dict:
    headers = {}
    for key, value in answer.headers.items():
      if key.lower() in _HOP_BY_HOP:
        continue
      if key.lower() == 'location':
        value = value.replace(self.target, self.url)
      headers[key] = value
    return headers

  async def _send(self, request, fault, status, headers, length, chunks):
    """Streams an answer to the client; a late reset sends part of it, then aborts."""
    response = web.StreamResponse(status=status, headers=headers)
    if length is not None:
      response.content_length = length
    await response.prepare(request)
    async for chunk in chunks:
      if fault == 'reset_after':
        await response.write(chunk[:len(chunk) // 2])
        break
      await response.write(chunk)
    if fault == 'reset_after':
      request.transport.abort()
      return response
    await response.write_eof()
    return response

  async def _serve(self, started: threading.Event):
    server_log = logging.getLogger('aiohttp.server')
    if not any(isinstance(f, _DropAbortedWrites) for f in server_log.filters):
      server_log.addFilter(_DropAbortedWrites())
    self._session = aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=64))
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route('*', '/{tail:.*}', self._handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # pylint: disable=protected-access
    self.url = f'http://127.0.0.1:{port}'
    self._stopped = asyncio.Event()
    started.set()
    try:
      await asyncio.wait_for(self._stopped.wait(), self.lifetime)
    except asyncio.TimeoutError:
      pass
    await runner.cleanup()
    await self._session.close()

  def start(self) -> 'FaultProxy':
    started = threading.Event()
    self._loop = asyncio.new_event_loop()

    def run():
      self._loop.run_until_complete(self._serve(started))
      self._loop.close()

    self._thread = threading.Thread(target=run, name='fault-proxy', daemon=True)
    self._thread.start()
    if not started.wait(20):
      raise RuntimeError('the fault proxy did not start')
    return self

  def stop(self):
    if self._thread is not None and self._thread.is_alive():
      self._loop.call_soon_threadsafe(self._stopped.set)
      self._thread.join(timeout=15)


async def _chunks(data: bytes):
  yield data

