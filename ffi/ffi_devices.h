// Maps the device ordinal XLA hands a handler to the device's global id, so
// a handler can find its rank in a replica group (groups are written in
// global ids at lowering).
//
// What the "ordinal" is differs by platform: XLA:GPU passes the local CUDA
// ordinal, XLA:CPU the device's id (2048 and up in a second process). So
// each platform has its own table, filled from Python by the rule that fits.
#pragma once

#include <cstdint>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {

enum class Platform : int { kHost = 0, kCuda = 1 };

// `ordinals[i]` is the ordinal XLA reports for the device with `global_ids[i]`.
void SetLocalDevices(Platform platform, const std::vector<int64_t>& ordinals,
                     const std::vector<int64_t>& global_ids);
ErrorOr<int64_t> GlobalIdOfOrdinal(Platform platform, int32_t ordinal);

}  // namespace jax_symm
