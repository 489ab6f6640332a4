"""Loads the compiled core and registers its FFI handlers with XLA."""

from __future__ import annotations

import functools
import glob
import importlib.machinery
import importlib.util
import os
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

@functools.cache
def publish_local_devices(platform: str) -> None:
    """Tells the handlers which global device id each XLA ordinal is.

    XLA:GPU reports the local CUDA ordinal (local_hardware_id); XLA:CPU
    reports the device id itself (2048 and up in a second process).
    """
    devices = jax.local_devices(backend=platform)
    ordinals = [d.id if platform == "cpu" else d.local_hardware_id for d in devices]
    ext.set_local_devices(platform, ordinals, [d.id for d in devices])
