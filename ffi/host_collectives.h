// FFI handler symbols of the host (XLA:CPU) transport.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace jax_symm {
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostAllGather);
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostReduceScatter);
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostAllReduce);
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostAllToAll);
// The instantiate stage of all three: holds the call site's windows for as
// long as the executable lives (its state's type must be registered first).
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostCallInstantiate);
XLA_FFI_TypeId* HostCallStateTypeId();
const XLA_FFI_TypeInfo* HostCallStateTypeInfo();
}  // namespace jax_symm
