// The NCCL versions at which what jax_symm does changes, as ncclGetVersion
// codes (major * 10000 + minor * 100 + patch: 22809 is 2.28.9). The one place
// these numbers are written: C++ reads the constants, Python the table
// (module.cc `nccl_version_floors()`), and README ("NCCL versions") says
// what each means for a user. Entry points NCCL added without changing a
// rule of jax_symm's (ncclMemAlloc 2.19, ncclCommRevoke 2.28) are looked up
// by symbol, not by version (nccl_api.cc).
#pragma once

namespace jax_symm {

// ncclCommWindowRegister with NCCL_WIN_COLL_SYMMETRIC: symmetric windows
// and the kernels that use them. Below it jax_symm's ops lower to XLA's own
// collectives (NcclApi::symmetric_windows).
inline constexpr int kSymmetricWindowsVersion = 22703;  // 2.27.3

// ncclAlltoAll. Whether the loaded NCCL has it is asked of the library by
// symbol (a null entry point), not by this number, which names the version
// for messages; without it grouped ncclSend/ncclRecv serve the all-to-all
// (nccl_enqueue.h EnqueueAllToAll).
inline constexpr int kAllToAllVersion = 22803;  // 2.28.3

// From 2.29.2 only the all-gather's receive buffer and the reduce-scatter's
// send buffer must lie in a window for NCCL's full set of symmetric kernels
// (before, both buffers of a call; 2.29's notes announce it, and 2.29.2 is
// the first release known to behave so, DESIGN.md). So the own path's reduce-scatter receives
// straight into XLA's output (its copy-out skipped, ScatterReceivesInPlace),
// and the XLA path windows only those two buffers (jax_symm/_nccl_path.py
// `window_buffers`). The all-gather's copy-in waits for kPdlFixedVersion.
inline constexpr int kHalfWindowVersion = 22902;  // 2.29.2

// From 2.29 NCCL also runs symmetric kernels on communicators whose ranks lie
// on several NCCL hosts (multi-node kernels; before, on one host only); where
// a system has no symmetric memory it registers a NULL window instead.
// info()'s `symmetric_kernels` per group follows it (jax_symm/_nccl.py).
inline constexpr int kMultiNodeSymmetricVersion = 22900;  // 2.29.0

// 2.28.3 to 2.30.6 launch their symmetric kernels with programmatic dependent
// launch (PDL) but without cudaGridDependencySynchronize (fixed in 2.30.7),
// so such a kernel may read its input before the *kernel* before it on the
// stream has flushed it. PDL never overlaps a kernel with a preceding memcpy,
// so below this version a memcpy always goes right before NCCL's kernel: the
// own path's all-gather keeps its copy-in (GatherSendsInPlace), and the XLA
// path puts a one-byte copy first (its `pdl_fence` attribute).
inline constexpr int kPdlFixedVersion = 23007;  // 2.30.7

// Which copies through the window NCCL `version` lets the own path skip.
// Pure functions of the version, so the rule is tested without a GPU.
constexpr bool GatherSendsInPlace(int version) { return version >= kPdlFixedVersion; }
constexpr bool ScatterReceivesInPlace(int version) { return version >= kHalfWindowVersion; }

// The floors by the names Python reads them by.
struct NcclVersionFloor {
  const char* name;
  int version;
};
inline constexpr NcclVersionFloor kNcclVersionFloors[] = {
    {"symmetric_windows", kSymmetricWindowsVersion},
    {"all_to_all", kAllToAllVersion},
    {"half_window", kHalfWindowVersion},
    {"multi_node_symmetric", kMultiNodeSymmetricVersion},
    {"pdl_fixed", kPdlFixedVersion},
};

}  // namespace jax_symm
