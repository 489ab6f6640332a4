// Bench-only: raw NCCL collectives on jax_symm's symmetric arenas, timed with
// CUDA events, no JAX involved. The floor an NCCL-based path can reach, for
// `jax_symm.diagnostics.nccl_raw_time` and the bench's `nccl_raw` method.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {

// Times `iters` back-to-back calls of `op` ("all_gather", "reduce_scatter",
// "all_reduce") over `bytes_per_rank` bytes of `dtype` (a numpy dtype name:
// "float32", "bfloat16", ...) on the group's largest arena, after 5 untimed
// calls. Returns microseconds per call, one figure per repeat. The group's
// communicator and an arena of at least world * bytes_per_rank must exist
// (set-up from Python). Every CUDA object it creates is destroyed on every path.
ErrorOr<std::vector<double>> NcclTimeRaw(const std::vector<int64_t>& members,
                                         const std::string& op, size_t bytes_per_rank,
                                         const std::string& dtype, int iters, int repeats);

}  // namespace jax_symm
