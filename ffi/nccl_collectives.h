// FFI handler symbols of the GPU (NCCL symmetric memory) transport.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace jax_symm {
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclAllGather);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclReduceScatter);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclAllReduce);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclAllToAll);
}  // namespace jax_symm
