// FFI handler symbols of the GPU (NCCL symmetric memory) transport.
#pragma once

#include "ffi_kinds.h"
#include "xla/ffi/api/ffi.h"

namespace jax_symm {
// Nccl<Name> for each row of the table of kinds (ffi_kinds.h).
#define JAX_SYMM_DECLARE_NCCL_HANDLER(Name, ...) XLA_FFI_DECLARE_HANDLER_SYMBOL(Nccl##Name);
JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_DECLARE_NCCL_HANDLER)
#undef JAX_SYMM_DECLARE_NCCL_HANDLER
}  // namespace jax_symm
