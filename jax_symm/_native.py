"""Loads the compiled core and registers its FFI handlers with XLA."""

from __future__ import annotations

import functools
import glob
import importlib.machinery
import importlib.util
import os
import re
import sys

import jax


def _installed_extension_paths() -> list[str]:
    """Compiled `_jax_symm` modules of installed copies of jax_symm, best first.

    A source checkout on sys.path (the cwd for `python -m`, `python -c`, a
    REPL or a script next to the README) shadows the installed package but
    holds no compiled extension; the installed one does.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    found: list[str] = []
    try:  # the installed distribution's own file list
        from importlib import metadata

        for f in metadata.files("jax_symm") or ():
            if (f.parts[:1] == ("jax_symm",) and f.name.startswith("_jax_symm")
                    and any(f.name.endswith(s) for s in suffixes)):
                found.append(str(f.locate()))
    except Exception:  # not installed as a distribution (or no RECORD)
        pass
    for entry in sys.path:  # any other jax_symm package on the path
        pkg = os.path.join(os.path.abspath(entry or os.getcwd()), "jax_symm")
        if os.path.abspath(pkg) != here:
            for s in suffixes:
                found.extend(glob.glob(os.path.join(pkg, "_jax_symm*" + s)))
    out: list[str] = []
    for path in found:
        path = os.path.abspath(path)
        if (os.path.isfile(path) and os.path.dirname(path) != here
                and path not in out):
            out.append(path)
    return out


def _load_extension():
    try:
        from . import _jax_symm

        return _jax_symm
    except ImportError as err:
        here = os.path.dirname(os.path.abspath(__file__))
        if any(glob.glob(os.path.join(here, "_jax_symm*" + s))
               for s in importlib.machinery.EXTENSION_SUFFIXES):
            raise  # the extension is here but failed to load: that error is the news
        first_error = err
    for path in _installed_extension_paths():
        name = f"{__package__}._jax_symm"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except ImportError:
            del sys.modules[name]
            continue
        return module
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    raise ImportError(
        f"jax_symm's compiled extension (_jax_symm) is not in {here}/jax_symm, and no "
        "installed jax_symm provides one. This happens when Python imports an "
        "unbuilt source checkout (run from the checkout root, the current directory "
        "comes first on sys.path). Build it: `pip install .` (then run from another "
        "directory, or use the jax-symm-* console scripts) or `pip install -e .` "
        "(works from the checkout too).") from first_error


ext = _load_extension()  # re-exported for the other modules

_DEFINE = re.compile(r"^#define (\w+) (\d+)\s*$", re.M)


def shipped_header_defines(filename: str, header_dir: str | None = None) -> dict[str, int]:
    """The `#define NAME <integer>` lines of `xla/ffi/api/<filename>` as the
    running jaxlib ships it (its headers describe the runtime they come
    with; `header_dir`: another include folder); {} where there is none."""
    try:
        base = jax.ffi.include_dir() if header_dir is None else header_dir
        with open(os.path.join(base, "xla", "ffi", "api", filename), encoding="utf-8") as f:
            return {name: int(value) for name, value in _DEFINE.findall(f.read())}
    except (OSError, AttributeError):
        return {}


def running_ffi_api() -> tuple[int, int] | None:
    """(major, minor) of the XLA FFI API of the jaxlib that runs, or None."""
    found = shipped_header_defines("c_api.h")
    if "XLA_FFI_API_MAJOR" not in found or "XLA_FFI_API_MINOR" not in found:
        return None
    return found["XLA_FFI_API_MAJOR"], found["XLA_FFI_API_MINOR"]


def build_mismatch(running: tuple[int, int] | None = None) -> str | None:
    """Why XLA will refuse this build's handlers, or None: XLA accepts handlers
    built against an FFI API as old as its own or older, never newer."""
    built = tuple(ext.build_info()["ffi_api"])
    running = running_ffi_api() if running is None else running
    if running is None or (built[0] == running[0] and built[1] <= running[1]):
        return None
    return _mismatch_message(running)


def _mismatch_message(running) -> str:
    import jaxlib

    api = lambda v: ".".join(map(str, v)) if v else "unknown"  # noqa: E731
    info = ext.build_info()
    return (
        f"jax_symm's handlers were built against the XLA FFI headers of "
        f"{info['ffi_headers']} (FFI API {api(info['ffi_api'])}), but the running "
        f"jaxlib {jaxlib.__version__} has FFI API {api(running)} and refuses handlers "
        "newer than itself. Rebuild jax_symm: `pip install --force-reinstall --no-deps .` "
        "from its source (its build pins the oldest admitted jaxlib's headers), or "
        "`pip install --no-build-isolation --force-reinstall --no-deps .` to build "
        "against the jaxlib installed here.")


def register_ffi_target(name: str, target, platform: str) -> None:
    """jax.ffi.register_ffi_target, with XLA's refusal of a handler built for a
    newer FFI API turned into an error that says what to do."""
    try:
        jax.ffi.register_ffi_target(name, target, platform=platform)
    except Exception as err:
        if "API version" not in str(err):
            raise
        raise ImportError(_mismatch_message(running_ffi_api()) + f" (XLA: {err})") from err


def check_build() -> None:
    """Raises ImportError, saying what to do, if XLA would refuse the handlers:
    at import, not at the first collective (registration itself is deferred
    by JAX until its backends start, where a refusal would break every backend)."""
    why = build_mismatch()
    if why:
        raise ImportError(why)

@functools.cache
def publish_local_devices(platform: str) -> None:
    """Tells the handlers which global device id each XLA ordinal is.

    XLA:GPU reports the local CUDA ordinal (local_hardware_id); XLA:CPU
    reports the device id itself (2048 and up in a second process).
    """
    devices = jax.local_devices(backend=platform)
    ordinals = [d.id if platform == "cpu" else d.local_hardware_id for d in devices]
    ext.set_local_devices(platform, ordinals, [d.id for d in devices])
