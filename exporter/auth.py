"""HTTP basic auth against bcrypt hashes, as exporter-toolkit's webHandler
checks them: one bcrypt at a time (it is meant to be slow: ~80 ms at cost
10 here), the outcome cached per (user, hash, password) so that a scraper
with the right password costs one bcrypt, not one per scrape, and a user
that does not exist still costs one, so that timing tells no names.

The cache is keyed by a SHA-256 of the three, so no password is kept in
memory; a hash changed in the file is a new key.
"""

import base64
import binascii
import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor

# exporter-toolkit's decoy: bcrypt of "fakepassword", cost 10.
_DECOY = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
CACHE_SIZE = 1024


def credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an Authorization header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _check(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt 5 refuses passwords over 72 bytes
        return False


class BasicAuth:
    def __init__(self):
        self._cache: dict[bytes, bool] = {}
        # Checks under way: fifty scrapers arriving together with the same
        # new password wait for one bcrypt, not fifty in a row.
        self._pending: dict[bytes, list] = {}  # key -> [future, connections waiting]
        self._lock = threading.Lock()
        # One worker: bcrypt runs off the event loop and one at a time, so
        # a flood of guesses takes one CPU at most.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")

    @staticmethod
    def _key(user: str, hashed: bytes, password: str) -> bytes:
        h = hashlib.sha256()
        for part in (user.encode(), hashed, password.encode()):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    def check(self, users: dict[str, bytes], header: str | None) -> bool | tuple[Future, bytes]:
        """True or False at once when known (or no credentials); else a
        Future of the bcrypt comparison's outcome and a key to release()
        if the connection goes before it is done."""
        creds = credentials(header)
        if creds is None:
            return False
        user, password = creds
        hashed = users.get(user)
        key = self._key(user, hashed or _DECOY, password)
        known = self._cache.get(key)
        if known is not None:
            return known
        valid_user = hashed is not None

        def compare() -> bool:
            ok = _check(password.encode(), hashed or _DECOY) and valid_user
            self._remember(key, ok)
            with self._lock:
                self._pending.pop(key, None)
            return ok

        with self._lock:
            if key in self._cache:  # finished since the look-up above
                return self._cache[key]
            if key not in self._pending:
                self._pending[key] = [self._pool.submit(compare), 0]
            self._pending[key][1] += 1
            return self._pending[key][0], key

    def release(self, key: bytes) -> None:
        """A connection stopped waiting; the last one cancels a check not
        yet started, so that closed connections leave no bcrypt queue."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                return
            pending[1] -= 1
            if pending[1] <= 0 and pending[0].cancel():
                del self._pending[key]

    def _remember(self, key: bytes, ok: bool) -> None:
        # Only the bcrypt thread writes; the loop only get()s, a single
        # dict operation under the GIL. Oldest out first.
        self._cache[key] = ok
        while len(self._cache) > CACHE_SIZE:
            del self._cache[next(iter(self._cache))]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
