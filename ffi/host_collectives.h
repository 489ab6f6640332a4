// FFI handler symbols of the host (XLA:CPU) transport.
#pragma once

#include "ffi_kinds.h"
#include "xla/ffi/api/ffi.h"

namespace jax_symm {
// Host<Name> for each row of the table of kinds (ffi_kinds.h).
#define JAX_SYMM_DECLARE_HOST_HANDLER(Name, ...) XLA_FFI_DECLARE_HANDLER_SYMBOL(Host##Name);
JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_DECLARE_HOST_HANDLER)
#undef JAX_SYMM_DECLARE_HOST_HANDLER
// The instantiate stage of them all: holds the call site's windows for as
// long as the executable lives (its state's type must be registered first).
XLA_FFI_DECLARE_HANDLER_SYMBOL(HostCallInstantiate);
XLA_FFI_TypeId* HostCallStateTypeId();
const XLA_FFI_TypeInfo* HostCallStateTypeInfo();
}  // namespace jax_symm
