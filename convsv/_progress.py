"""Progress bars for long computations (``progress=True`` on the public functions).

tqdm draws the bar when it is installed (an optional dependency); otherwise one line on
stderr is rewritten in place, at most ten times a second. Updates may come from the
worker threads of :func:`convsv._backends.map_chunks`, hence the lock.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

__all__ = ["Progress", "check_progress"]


def check_progress(progress: Any) -> bool:
    if not isinstance(progress, bool):
        msg = f"progress must be True or False, got {progress!r}"
        raise TypeError(msg)
    return progress


class Progress:
    """``with Progress(total, desc, enabled) as bar: bar.update(1, smax=...)``."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.count, self.postfix = 0, ""
        self._lock = threading.Lock()
        self._last = 0.0
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, leave=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.count += n
            if postfix:
                self.postfix = ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in postfix.items()
                )
            if self._bar is not None:
                if postfix:
                    self._bar.set_postfix_str(self.postfix, refresh=False)
                self._bar.update(n)
                return
            now = time.monotonic()
            if now - self._last >= 0.1 or self.count >= self.total:
                self._last = now
                sys.stderr.write(f"\r{self.desc}: {self.count}/{self.total} {self.postfix}\x1b[K")
                sys.stderr.flush()

    def __enter__(self) -> Progress:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
