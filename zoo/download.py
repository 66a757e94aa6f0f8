"""Verified downloads of weight files, with a cache and a mirror.

Files are fetched with `keras.utils.get_file` (progress bar, cache, sha256
check: a cached file whose hash does not match, e.g. a partial download, is
fetched again).

Environment:
    KERAS_GN_WEIGHTS_DIR: cache directory (default `$KERAS_HOME` or
        `~/.keras`); files go to its `keras_gn_weights/` subdirectory.
    KERAS_GN_WEIGHTS_MIRROR: a base URL that serves the files under their
        registered names, used instead of the original URLs (for clusters
        without internet access: copy the files to an internal server).
"""

import contextlib
import os
import pathlib

import keras

CACHE_SUBDIR = "keras_gn_weights"
MIRROR_VARIABLE = "KERAS_GN_WEIGHTS_MIRROR"


class DownloadError(RuntimeError):
    """A weight file could not be fetched; the message says what to do."""


def cache_dir():
    """The directory whose `keras_gn_weights/` subdirectory holds the files."""
    base = os.environ.get("KERAS_GN_WEIGHTS_DIR") or os.environ.get("KERAS_HOME")
    return pathlib.Path(base or pathlib.Path.home() / ".keras").expanduser()


def cached_path(filename):
    """Where `fetch` keeps (and looks for) `filename`."""
    return cache_dir() / CACHE_SUBDIR / filename


def origin(url, filename):
    """The URL to fetch from: the mirror's, if one is set."""
    mirror = os.environ.get(MIRROR_VARIABLE)
    if mirror:
        return f"{mirror.rstrip('/')}/{filename}"
    return url


@contextlib.contextmanager
def mirrored_from(directory):
    """Downloads read the files in local `directory` meanwhile, as from a
    `KERAS_GN_WEIGHTS_MIRROR` (sha256 checks and cache as usual)."""
    before = os.environ.get(MIRROR_VARIABLE)
    os.environ[MIRROR_VARIABLE] = pathlib.Path(directory).resolve().as_uri()
    try:
        yield
    finally:
        if before is None:
            del os.environ[MIRROR_VARIABLE]
        else:
            os.environ[MIRROR_VARIABLE] = before


def fetch(url, filename, sha256=None, validate=None):
    """Returns the local path of `filename`, downloading it if needed.

    Args:
        url: where the file is published.
        filename: name of the file in the cache (and on a mirror).
        sha256: expected sha256 hex digest, or None where none is known.
        validate: optional `fn(path)` that raises if the file is unusable;
            where no sha256 is known it is the only check, and a cached file
            that fails it (e.g. truncated) is deleted and fetched again.

    Raises:
        DownloadError: when the file cannot be fetched or fails its checks,
            saying where to place it by hand.
    """
    source = origin(url, filename)
    target = cached_path(filename)
    # get_file falls back to /tmp/.keras for a cache_dir it cannot write to,
    # e.g. one that does not exist yet.
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        try:
            path = keras.utils.get_file(
                fname=filename,
                origin=source,
                file_hash=sha256,
                hash_algorithm="sha256",
                cache_dir=str(cache_dir()),
                cache_subdir=CACHE_SUBDIR,
                force_download=attempt > 0,
            )
        except Exception as error:  # get_file raises bare Exceptions for URL errors
            if target.exists() and sha256 is not None:
                target.unlink()  # a download whose hash did not match
            raise DownloadError(_instructions(filename, source, sha256, error)) from None
        if validate is None:
            return pathlib.Path(path)
        try:
            validate(path)
            return pathlib.Path(path)
        except Exception as error:
            pathlib.Path(path).unlink(missing_ok=True)
            if attempt:
                raise DownloadError(_instructions(filename, source, sha256, error)) from None


def _instructions(filename, source, sha256, error):
    """One short message: what was tried, why it failed, what to do."""
    reason = " ".join(str(error).split()) or type(error).__name__
    checksum = f" (sha256 {sha256})" if sha256 else ""
    mirror = os.environ.get(MIRROR_VARIABLE)
    if mirror:
        where = f"from the mirror KERAS_GN_WEIGHTS_MIRROR={mirror}"
        todo = f"check that the mirror serves {filename}, or unset KERAS_GN_WEIGHTS_MIRROR to use the original URL"
    else:
        where = f"from {source}"
        todo = ("on a machine without internet access, set KERAS_GN_WEIGHTS_MIRROR to a base URL that "
                f"serves {filename}")
    return (f"Could not get the weight file {filename} {where}: {reason}. To fix: {todo}; or download it by "
            f"hand{checksum} and place it at {cached_path(filename)}.")
