"""A dependency-free console progress bar for streaming loops.

On a terminal it redraws one line on stderr; otherwise (logs, CI) it writes an
absl log line at every tenth of the way, so batch jobs still show progress.
"""
import sys
import time

from absl import logging


class ProgressBar:
  """`update(n)` after each batch; `close()` at the end. `total` may be None (unknown)."""

  def __init__(self, total, desc: str, stream=None, width: int = 30):
    self.total = total
    self.desc = desc
    self.stream = stream if stream is not None else sys.stderr
    self.width = width
    self.count = 0
    self.start = time.perf_counter()
    self._tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._next_log = 0.1

  def _line(self):
    elapsed = time.perf_counter() - self.start
    rate = self.count / elapsed if elapsed > 0 else 0.0
    if self.total:
      frac = min(1.0, self.count / self.total)
      bar = '#' * int(frac * self.width) + '.' * (self.width - int(frac * self.width))
      return (f'{self.desc} [{bar}] {100 * frac:3.0f}% {self.count}/{self.total} '
              f'({rate:.0f}/s, {elapsed:.1f}s)')
    return f'{self.desc} {self.count} ({rate:.0f}/s, {elapsed:.1f}s)'

  def update(self, n: int):
    self.count += n
    if self._tty:
      self.stream.write('\r' + self._line())
      self.stream.flush()
    elif self.total and self.count / self.total >= self._next_log:
      logging.info('%s', self._line())
      while self._next_log <= self.count / self.total:
        self._next_log += 0.1

  def close(self):
    if self._tty:
      self.stream.write('\r' + self._line() + '\n')
      self.stream.flush()
    else:
      logging.info('%s done', self._line())
