// FFI handler symbols of the NCCL transport's XLA path (XLA's communicator
// and collective memory): a Prepare stage and an Execute stage per kind, the
// latter also as a command-buffer-compatible variant (captured into XLA's
// CUDA graphs).
#pragma once

#include "xla/ffi/api/ffi.h"

namespace jax_symm {
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllGatherPrepare);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllGather);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllGatherCaptured);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaReduceScatterPrepare);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaReduceScatter);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaReduceScatterCaptured);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllReducePrepare);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllReduce);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllReduceCaptured);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllToAllPrepare);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllToAll);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NcclXlaAllToAllCaptured);
}  // namespace jax_symm
