"""jax_symm declares the slice of XLA's FFI collectives extension it uses
(ffi/xla_collectives.h) instead of including jaxlib's header, so that one build
serves every admitted jaxlib. Here those declarations are compiled against the
running jaxlib's own header, where it ships one: every offset and size jax_symm
reads must be the header's, or the handler would read the wrong fields."""

from __future__ import annotations

import os
import shutil
import subprocess

import jax
import pytest

from jax_symm import _nccl_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHECKS = r"""
#include <cstddef>
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/collectives_c_api.h"
#include "xla_collectives.h"

namespace a = jax_symm::xla_abi;
#define SAME_SIZE(ours, theirs) static_assert(sizeof(a::ours) == sizeof(theirs), #ours);
#define SAME(ours, theirs, field) \
  static_assert(offsetof(a::ours, field) == offsetof(theirs, field), #ours "." #field);

SAME_SIZE(ExtensionId, XLA_FFI_ExtensionId)
SAME(ExtensionId, XLA_FFI_ExtensionId, major_version)
SAME(ExtensionId, XLA_FFI_ExtensionId, minor_version)
SAME_SIZE(ExtensionBase, XLA_FFI_Extension)
SAME(ExtensionBase, XLA_FFI_Extension, id)
SAME(ExtensionBase, XLA_FFI_Extension, next)
SAME_SIZE(ReplicaGroup, XLA_FFI_ReplicaGroup)
SAME(ReplicaGroup, XLA_FFI_ReplicaGroup, size)
static_assert(a::kCollectivesExtensionType == XLA_FFI_Extension_Collectives, "extension id");
static_assert(a::kGroupFlattenedId == XLA_FFI_GROUP_FLATTENED_ID, "group mode");
static_assert(sizeof(XLA_FFI_CollectiveGroupMode) == sizeof(int32_t), "group mode size");
SAME_SIZE(CommunicatorRequestArgs, XLA_FFI_Communicator_Request_Args)
SAME(CommunicatorRequestArgs, XLA_FFI_Communicator_Request_Args, group_mode)
SAME(CommunicatorRequestArgs, XLA_FFI_Communicator_Request_Args, groups)
SAME(CommunicatorRequestArgs, XLA_FFI_Communicator_Request_Args, num_groups)
SAME(CommunicatorRequestArgs, XLA_FFI_Communicator_Request_Args, communication_id)
SAME(CommunicatorGetArgs, XLA_FFI_Communicator_Get_Args, communication_id)
SAME(CommunicatorGetArgs, XLA_FFI_Communicator_Get_Args, communicator)
SAME(CollectivesExtension, XLA_FFI_Collectives_Extension, extension_base)
SAME(CollectivesExtension, XLA_FFI_Collectives_Extension, state)
SAME(CollectivesExtension, XLA_FFI_Collectives_Extension, request_communicator)
SAME(CollectivesExtension, XLA_FFI_Collectives_Extension, get_communicator)
#if XLA_FFI_Extension_Collectives_MinorVersion >= 3
SAME_SIZE(CommunicatorGetArgs, XLA_FFI_Communicator_Get_Args)
SAME(CommunicatorGetArgs, XLA_FFI_Communicator_Get_Args, rank)
SAME(CommunicatorGetArgs, XLA_FFI_Communicator_Get_Args, size)
#endif
#if XLA_FFI_Extension_Collectives_MinorVersion >= 2
SAME_SIZE(CollectivesExtension, XLA_FFI_Collectives_Extension)
SAME(CollectivesExtension, XLA_FFI_Collectives_Extension, request_window)
SAME(CollectivesExtension, XLA_FFI_Collectives_Extension, get_window)
SAME_SIZE(MemoryRegion, XLA_FFI_CollectiveMemoryRegion)
SAME(MemoryRegion, XLA_FFI_CollectiveMemoryRegion, byte_size)
SAME(MemoryRegion, XLA_FFI_CollectiveMemoryRegion, flags)
SAME_SIZE(WindowRequestArgs, XLA_FFI_Window_Request_Args)
SAME(WindowRequestArgs, XLA_FFI_Window_Request_Args, communication_id)
SAME(WindowRequestArgs, XLA_FFI_Window_Request_Args, regions)
SAME(WindowRequestArgs, XLA_FFI_Window_Request_Args, num_regions)
SAME_SIZE(WindowGetArgs, XLA_FFI_Window_Get_Args)
SAME(WindowGetArgs, XLA_FFI_Window_Get_Args, buffer)
SAME(WindowGetArgs, XLA_FFI_Window_Get_Args, window)
SAME(WindowGetArgs, XLA_FFI_Window_Get_Args, window_offset)
#endif
// FindExtension: API 0.4 appended it right after XLA_FFI_DeviceOrdinal_Get.
static_assert(offsetof(XLA_FFI_Api, XLA_FFI_InvokeContext_FindExtension) ==
              offsetof(XLA_FFI_Api, XLA_FFI_DeviceOrdinal_Get) + sizeof(void*), "FindExtension");
SAME_SIZE(FindExtensionArgs, XLA_FFI_InvokeContext_FindExtension_Args)
SAME(FindExtensionArgs, XLA_FFI_InvokeContext_FindExtension_Args, ctx)
SAME(FindExtensionArgs, XLA_FFI_InvokeContext_FindExtension_Args, extension_type)
SAME(FindExtensionArgs, XLA_FFI_InvokeContext_FindExtension_Args, extension)
"""


def _compile(tmp_path, source: str) -> subprocess.CompletedProcess:
    """Compiles `source` (syntax only) against the running jaxlib's headers and
    jax_symm's ffi/; skips where jaxlib ships no extension header or no
    compiler is here."""
    include = jax.ffi.include_dir()
    if _nccl_path.collectives_extension(include) is None:
        pytest.skip(f"jaxlib {jax.__version__} ships no collectives extension header")
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler here to check the declarations with")
    path = tmp_path / "abi.cc"
    path.write_text(source)
    return subprocess.run([compiler, "-std=c++17", "-fsyntax-only", "-I", include,
                           "-I", os.path.join(ROOT, "ffi"), str(path)],
                          capture_output=True, text=True, timeout=120)


def test_declarations_match_the_running_jaxlibs_header(tmp_path):
    done = _compile(tmp_path, _CHECKS)
    assert done.returncode == 0, done.stderr[-4000:]


def test_a_broken_declaration_fails_the_check(tmp_path):
    """The check itself can fail: a wrong offset is caught."""
    done = _compile(tmp_path, _CHECKS + "\nstatic_assert(offsetof(a::ReplicaGroup, size) == 0, "
                    "\"broken\");\n")
    assert done.returncode != 0 and "broken" in done.stderr
