// Maps XLA's local device ordinals to global device ids, so a handler can find
// its rank in a replica group (groups are written in global ids at lowering).
#pragma once

#include <cstdint>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {

// Set once from Python (jax.local_devices()); read by every handler call.
void SetLocalDevices(const std::vector<int64_t>& global_id_by_ordinal);
ErrorOr<int64_t> GlobalIdOfOrdinal(int32_t ordinal);

}  // namespace jax_symm
