// FFI handler symbols of the host (XLA:CPU) transport.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace jax_symm {
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostAllGather);
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostReduceScatter);
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostAllReduce);
}  // namespace jax_symm
