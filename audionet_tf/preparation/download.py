"""Download clip sections with yt-dlp (used as a library), into a cache keyed by video and section.

Only [start - margin, start + duration + margin] is downloaded (yt-dlp's download ranges,
cut with forced keyframes so the file starts where it was asked to), in a format with both
audio and video, with the ffmpeg binary of `imageio-ffmpeg` and, for YouTube's JavaScript
challenges, the deno runtime the `deno` wheel installs. Each section is written to a
temporary directory inside the cache and renamed into place when complete, so a rerun
finds it and downloads nothing. Network errors and HTTP 429 are retried with back-off;
a video that is gone (404, removed, private) fails at once with a `DownloadError`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sysconfig
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

from audionet_tf.core.errors import AudioNetError
from audionet_tf.preparation.manifest import SAFE, Clip
from audionet_tf.preparation.media import ffmpeg_exe

log = logging.getLogger(__name__)

PERMANENT = re.compile(r"HTTP Error 40[0134]|HTTP Error 410|Video unavailable|Private video|removed|"
                       r"not available|copyright|Unsupported URL|Sign in to confirm your age", re.I)
OFFLINE = re.compile(r"Name or service not known|Temporary failure in name resolution|Network is unreachable|"
                     r"nodename nor servname|getaddrinfo failed", re.I)


class DownloadError(AudioNetError):
    """A clip that could not be downloaded; the message says which and why."""


@dataclass
class Downloaded:
    """A local media file holding a clip, and where the clip's start lies in it."""

    path: str
    offset: float
    cached: bool


def deno_path() -> str | None:
    """The deno binary the `deno` wheel installs, for yt-dlp's JavaScript challenges."""
    try:
        import deno

        return deno.find_deno_bin()
    except (ImportError, FileNotFoundError, OSError):
        return shutil.which("deno")


def ffmpeg_dir(cache_dir: str, target: str | None = None) -> str:
    """A directory holding `ffmpeg` (a link to imageio-ffmpeg's binary, whose own file name yt-dlp
    does not recognise), to pass to yt-dlp as `ffmpeg_location`."""
    folder = os.path.join(cache_dir, ".bin")
    link = os.path.join(folder, "ffmpeg")
    target = target or ffmpeg_exe()
    if os.path.realpath(link) != os.path.realpath(target):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{link}.{uuid.uuid4().hex}.tmp"
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return folder


class Downloader:
    """Fetches clips into `cache_dir/<video id>/<start ms>-<end ms>.mp4`."""

    def __init__(self, cache_dir: str, retries: int = 3, margin_s: float = 1.0, backoff_s: float = 2.0,
                 quiet: bool = True):
        self.cache_dir = os.path.abspath(cache_dir)
        self.retries = retries
        self.margin_s = margin_s
        self.backoff_s = backoff_s
        self.quiet = quiet
        # What is the same for every download is found here, before downloads start in several threads:
        # CPython 3.11 fills `sysconfig`'s variables without a lock, and the deno wheel's lookup reads them.
        sysconfig.get_config_vars()
        self.runtime = deno_path()
        self.ffmpeg = ffmpeg_exe()
        self._tools: str | None = None
        self._tools_lock = threading.Lock()

    def tools(self) -> str:
        """The directory yt-dlp gets as `ffmpeg_location`, made on the first download (and put first on PATH)."""
        with self._tools_lock:
            if self._tools is None:
                tools = ffmpeg_dir(self.cache_dir, self.ffmpeg)
                # yt-dlp decides whether sections can be cut by looking for ffmpeg on PATH, before it
                # reads `ffmpeg_location`: put the linked binary first on this process's PATH.
                if tools not in os.environ.get("PATH", "").split(os.pathsep):
                    os.environ["PATH"] = tools + os.pathsep + os.environ.get("PATH", "")
                self._tools = tools
            return self._tools

    def options(self, clip: Clip, work: str) -> dict:
        """yt-dlp's options for downloading a clip's section into the directory `work`."""
        from yt_dlp.utils import download_range_func

        begin, end = self.section(clip)
        return {
            "outtmpl": {"default": os.path.join(work, "section.%(ext)s")},
            "format": "b[vcodec!=none][acodec!=none]/bv*+ba/b",
            "merge_output_format": "mp4",
            "download_ranges": download_range_func(None, [(begin, end)]),
            "force_keyframes_at_cuts": True,
            "ffmpeg_location": self.tools(),
            "quiet": self.quiet, "no_warnings": self.quiet, "noprogress": True,
            "noplaylist": True, "socket_timeout": 30, "retries": 0, "overwrites": True,
            "js_runtimes": {"deno": {"path": self.runtime}} if self.runtime else {"deno": {}},
        }

    def section(self, clip: Clip) -> tuple[float, float]:
        """The downloaded section [begin, end) in seconds of the video."""
        return max(0.0, clip.start - self.margin_s), clip.start + clip.duration + self.margin_s

    def cache_path(self, clip: Clip) -> str:
        """Where the clip's section is cached (always inside the cache directory)."""
        begin, end = self.section(clip)
        folder = SAFE.sub("-", clip.video_id) or "video"
        return os.path.join(self.cache_dir, folder, f"{int(round(begin * 1000))}-{int(round(end * 1000))}.mp4")

    def fetch(self, clip: Clip) -> Downloaded:
        """The clip's media: the local file itself, the cached section, or a fresh download."""
        if clip.source == "local":
            return Downloaded(clip.url, clip.start, True)
        path = self.cache_path(clip)
        begin, _ = self.section(clip)
        if os.path.isfile(path):
            return Downloaded(path, clip.start - begin, True)
        attempt = 0
        while True:
            try:
                self._download(clip, path)
                return Downloaded(path, clip.start - begin, False)
            except DownloadError as exc:
                message = str(exc)
                if PERMANENT.search(message) or attempt >= self.retries:
                    raise
                if OFFLINE.search(message):
                    raise DownloadError(f"{clip.url}: cannot reach the host ({message}); without network, "
                                        "try the offline demo: audionet demo") from None
                wait = self.backoff_s * (2 ** attempt)
                log.warning("%s: %s; retrying in %.0f s", clip.id, message, wait)
                time.sleep(wait)
                attempt += 1

    def _download(self, clip: Clip, path: str) -> None:
        import yt_dlp

        os.makedirs(os.path.dirname(path), exist_ok=True)
        work = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(path))
        try:
            with yt_dlp.YoutubeDL(self.options(clip, work)) as ydl:
                ydl.download([clip.url])
            produced = [f for f in os.listdir(work) if f.startswith("section.") and not f.endswith(".part")]
            if not produced:
                raise DownloadError(f"{clip.url}: yt-dlp produced no file")
            os.replace(os.path.join(work, produced[0]), path)
        except yt_dlp.utils.DownloadError as exc:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).replace("ERROR: ", "")
            raise DownloadError(f"{clip.url}: {text}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
