"""Pulling GGUF models from the Hugging Face Hub into the store.

``huggingface_hub`` does the talking (``HF_ENDPOINT``, ``HF_TOKEN``, proxies, its shared
HTTP client); this module adds what the store needs: one content-addressed blob per file,
resumable partial files (HTTP Range), sha256 verification against the Hub's ETag, a file
lock so concurrent pulls download once, and a GGUF check before a manifest is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import DownloadFailed, InvalidName, ModelNotFound, MullamaError, NoSpace
from .aliases import EMBEDDED_NAME, HubSource, check_hub_filename, hub_source, unknown_model
from .gguf import read_gguf
from .store import FileRef, Manifest, ModelStore, space_error

try:  # huggingface_hub >= 1.0 talks through httpx (2.x ships it as ``httpx2``)
    import httpx2 as _http  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class RemoteFile:
    filename: str
    url: str  # where the bytes are (the Hub or the CDN it redirects to)
    digest: str  # sha256:<hex>
    size: int
    commit: str | None


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _noop(_: dict[str, Any]) -> None:
    pass


class Puller:
    """Pulls one name at a time; ``attempts`` network tries per file before giving up (the
    partial file stays, so the next pull resumes)."""

    def __init__(
        self,
        store: ModelStore,
        *,
        token: str | None = None,
        cancel: threading.Event | None = None,
        attempts: int = 4,
        retry_delay: float = 0.5,
    ) -> None:
        self.store = store
        self.endpoint = _endpoint()
        self.token = token if token is not None else os.environ.get("HF_TOKEN") or None
        self.cancel = cancel or threading.Event()
        self.attempts = attempts
        self.retry_delay = retry_delay

    # ---- the whole pull ----------------------------------------------------------

    def pull(self, name: str, progress: Progress = _noop) -> Manifest | None:
        """Returns the manifest written (None for the built-in model: nothing to pull)."""
        source = hub_source(name)
        if source is None and name != EMBEDDED_NAME:
            if self.store.get(name) is not None:
                raise ModelNotFound(
                    f"model {name!r} was created or copied locally; there is nothing to pull"
                )
            raise unknown_model(name, self.store.names())
        if source is None or name == EMBEDDED_NAME:
            progress({"status": "pulling manifest"})
            progress({"status": "success"})
            return None
        # What to pull is known before the first event, so a name the Hub does not have is
        # an HTTP 404, not a 200 whose stream ends with an error.
        files = [self._remote(source, f) for f in self._filenames(source)]
        progress({"status": "pulling manifest"})
        refs = []
        for rf in files:
            try:
                self._download(rf, progress)
            except NoSpace as exc:
                exc.message = f"cannot pull {name!r}: {exc.message}"
                raise
            refs.append(FileRef(rf.digest, rf.size, Path(rf.filename).name))
        progress({"status": "verifying sha256 digest"})
        quant = None
        for i, ref in enumerate(refs):
            info = self._check_gguf(ref, name)
            if i == 0:
                quant = info.quantization
        progress({"status": "writing manifest"})
        manifest = Manifest(
            name=name,
            files=refs,
            quant=quant,
            source={
                "repo": source.repo,
                "revision": source.revision,
                "commit": files[0].commit,
                "files": [f.filename for f in files],
            },
        )
        self.store.write(manifest)
        progress({"status": "success"})
        return manifest

    def _check_gguf(self, ref: FileRef, name: str) -> Any:
        blob = self.store.blob_path(ref.digest)
        try:
            return read_gguf(blob)
        except MullamaError as exc:
            with self.store.blob_lock(ref.digest):
                blob.unlink(missing_ok=True)
            log.warning("pulled %s for %r: %s", ref.filename, name, exc.message)
            why = exc.message.replace(f"{blob}: ", "")  # the client learns no store path
            raise DownloadFailed(
                f"pulled {ref.filename} for {name!r} but it is not a usable GGUF file "
                f"({why}); it was discarded"
            ) from exc

    # ---- talking to the Hub --------------------------------------------------------

    def _headers(self, url: str) -> dict[str, str]:
        """Hub headers; the token only for the Hub's own origin (never a CDN)."""
        from huggingface_hub.utils import build_hf_headers

        same = _origin(url) == _origin(self.endpoint)
        return build_hf_headers(token=self.token if same and self.token else False)

    def _filenames(self, source: HubSource) -> list[str]:
        if source.filename is not None:
            m = _SPLIT.match(source.filename)
            if not m:
                return [source.filename]
            n = int(m.group("n"))
            return [f"{m.group('prefix')}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
        return self._select_quant(source)

    def _select_quant(self, source: HubSource) -> list[str]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        try:
            entries = list(api.list_repo_tree(source.repo, revision=source.revision))
        except Exception as exc:  # noqa: BLE001 - the Hub client raises many kinds
            raise _hub_error(exc, f"listing {source.repo}") from exc
        ggufs = [e.path for e in entries if getattr(e, "size", None) is not None]
        ggufs = [p for p in ggufs if p.lower().endswith(".gguf")]
        quant = re.escape(source.quant or "")
        pat = re.compile(rf"(?:^|[-_.]){quant}(?:-\d{{5}}-of-\d{{5}})?\.gguf$", re.I)
        chosen = sorted(p for p in ggufs if pat.search(p.rsplit("/", 1)[-1]))
        groups = {_SPLIT.sub(r"\g<prefix>", p) if _SPLIT.match(p) else p for p in chosen}
        if not chosen:
            available = sorted({_quant_of(p) for p in ggufs})
            raise ModelNotFound(
                f"{source.repo} has no {source.quant} GGUF"
                + (f"; available: {', '.join(available)}" if available else " (no GGUF files)")
            )
        if len(groups) > 1:
            raise ModelNotFound(
                f"{source.repo} has several {source.quant} GGUFs ({', '.join(sorted(groups))}); "
                f"pull one with hf:{source.repo}/FILE.gguf"
            )
        return [check_hub_filename(p) for p in chosen]

    def _remote(self, source: HubSource, filename: str) -> RemoteFile:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        check_hub_filename(filename)
        url = hf_hub_url(source.repo, filename, revision=source.revision, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token or False, retry_on_errors=True)
        except Exception as exc:  # noqa: BLE001
            raise _hub_error(exc, f"{source.repo}/{filename}") from exc
        etag = (meta.etag or "").strip('"').lower()
        if not _SHA256.fullmatch(etag):
            raise DownloadFailed(
                f"the Hub reported no sha256 for {source.repo}/{filename}; refusing to pull "
                "a file that cannot be verified"
            )
        if meta.size is None:
            raise DownloadFailed(f"the Hub reported no size for {source.repo}/{filename}")
        return RemoteFile(filename, meta.location, f"sha256:{etag}", meta.size, meta.commit_hash)

    # ---- one file ---------------------------------------------------------------------

    def _download(self, rf: RemoteFile, progress: Progress) -> None:
        status = f"pulling {rf.digest[7:19]}"
        store = self.store
        blob = store.blob_path(rf.digest)
        with store.blob_lock(rf.digest):
            if blob.is_file():
                progress(_event(status, rf, rf.size))
                return
            partial = store.partial_path(rf.digest)
            hasher = hashlib.sha256()
            done = _hash_existing(partial, hasher, rf.size)
            self._check_space(partial, rf.size - done)
            progress(_event(status, rf, done))
            for attempt in range(1, self.attempts + 1):
                try:
                    done, hasher = self._fetch(rf, partial, done, hasher, status, progress)
                    break
                except _http.TransportError as exc:
                    if attempt == self.attempts:
                        raise DownloadFailed(
                            f"download of {rf.filename} interrupted at {done} of {rf.size} "
                            f"bytes ({exc}); pull again to resume"
                        ) from exc
                    log.warning("download of %s interrupted (%s); resuming", rf.filename, exc)
                    done = partial.stat().st_size if partial.exists() else 0
                    hasher = hashlib.sha256()
                    _hash_existing(partial, hasher, rf.size)
                    time.sleep(self.retry_delay * attempt)
            if done != rf.size:
                partial.unlink(missing_ok=True)
                raise DownloadFailed(
                    f"{rf.filename} is truncated: got {done} of {rf.size} bytes; the download "
                    "was discarded"
                )
            got = "sha256:" + hasher.hexdigest()
            if got != rf.digest:
                partial.unlink(missing_ok=True)
                raise DownloadFailed(
                    f"sha256 mismatch for {rf.filename}: expected {rf.digest[7:]}, got "
                    f"{got[7:]}; the download was discarded"
                )
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, blob)

    def _check_space(self, partial: Path, needed: int) -> None:
        free = shutil.disk_usage(partial.parent).free
        if needed > free:
            partial.unlink(missing_ok=True)
            log.warning("model store %s: %d bytes needed, %d free", self.store.root, needed, free)
            raise NoSpace(
                f"no space left on device for the model store: {needed} bytes needed, {free} free"
            )

    def _fetch(
        self,
        rf: RemoteFile,
        partial: Path,
        done: int,
        hasher: Any,
        status: str,
        progress: Progress,
    ) -> tuple[int, Any]:
        from huggingface_hub.utils import get_session

        headers = self._headers(rf.url)
        headers["Accept-Encoding"] = "identity"
        if done:
            headers["Range"] = f"bytes={done}-"
        with get_session().stream("GET", rf.url, headers=headers, timeout=60) as resp:
            if resp.status_code == 416 and done == rf.size:
                return done, hasher
            if resp.status_code not in (200, 206):
                raise DownloadFailed(
                    f"downloading {rf.filename}: the server answered {resp.status_code}"
                )
            mode = "ab"
            if done and resp.status_code == 200:  # the server ignored Range: start over
                done, hasher, mode = 0, hashlib.sha256(), "wb"
            step = max(rf.size // 200, 1 << 20)
            next_report = done + step
            try:
                with partial.open(mode) as f:
                    for chunk in resp.iter_bytes():  # as received: a cut keeps what came
                        if self.cancel.is_set():
                            raise DownloadFailed(f"pull of {rf.filename} was cancelled")
                        f.write(chunk)
                        hasher.update(chunk)
                        done += len(chunk)
                        if done > rf.size:
                            break
                        if done >= next_report:
                            progress(_event(status, rf, done))
                            next_report = done + step
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise space_error(exc, self.store.root) from exc
        progress(_event(status, rf, min(done, rf.size)))
        return done, hasher


def _event(status: str, rf: RemoteFile, completed: int) -> dict[str, Any]:
    return {"status": status, "digest": rf.digest, "total": rf.size, "completed": completed}


def _hash_existing(partial: Path, hasher: Any, size: int) -> int:
    """Feed what a previous attempt left into the hasher; drop a partial that is too big."""
    if not partial.exists():
        return 0
    n = partial.stat().st_size
    if n > size:
        partial.unlink()
        return 0
    with partial.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return n


_QUANT_SUFFIX = re.compile(r"(?:^|[-_.])((?:I?Q|TQ)\d[A-Za-z0-9_]*|BF16|F16|F32)$", re.I)


def _quant_of(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = _SPLIT.sub(r"\g<prefix>", base) if _SPLIT.match(base) else base[: -len(".gguf")]
    m = _QUANT_SUFFIX.search(base)
    return m.group(1).upper() if m else base


def _hub_error(exc: Exception, what: str) -> MullamaError:
    if isinstance(exc, MullamaError):
        return exc
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return DownloadFailed(f"{what}: access denied by the Hub (set HF_TOKEN for gated models)")
    if status == 404:
        return ModelNotFound(f"{what}: not found on the Hub")
    if isinstance(exc, InvalidName):
        return exc
    return DownloadFailed(f"{what}: {type(exc).__name__}: {exc}")
