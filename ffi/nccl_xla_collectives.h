// FFI handler symbols of the NCCL transport's XLA path (XLA's communicator
// and collective memory): a Prepare stage and an Execute stage per kind, the
// latter also as a command-buffer-compatible variant (captured into XLA's
// CUDA graphs).
#pragma once

#include "ffi_kinds.h"
#include "xla/ffi/api/ffi.h"

namespace jax_symm {
// NcclXla<Name>Prepare, NcclXla<Name> and NcclXla<Name>Captured for each row
// of the table of kinds (ffi_kinds.h).
#define JAX_SYMM_DECLARE_NCCL_XLA_HANDLERS(Name, ...)     \
  XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXla##Name##Prepare); \
  XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXla##Name);          \
  XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXla##Name##Captured);
JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_DECLARE_NCCL_XLA_HANDLERS)
#undef JAX_SYMM_DECLARE_NCCL_XLA_HANDLERS
}  // namespace jax_symm
