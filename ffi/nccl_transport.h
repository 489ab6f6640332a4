// GPU transport: NCCL communicators per replica group and, per communicator,
// symmetric window arenas (ncclMemAlloc + ncclCommWindowRegister).
//
// Everything collective (communicator creation, window registration) happens
// in the set-up calls that lowering makes from Python, never inside a handler
// and never during CUDA-graph capture. Handlers only look up what set-up made
// and enqueue copies and one NCCL call on XLA's stream.
//
// An arena is identified by its size: arenas only grow, each growth is a new
// registration and the old arena stays alive, so a compiled call that names
// an arena size keeps working (and keeps the same offsets across CUDA-graph
// replays) whatever was compiled after it.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_api.h"
#include "ffi_common.h"

namespace jax_symm {

struct LocalRankSpec {
  int64_t global_id;
  int cuda_ordinal;
  int rank;
};

// Creates this process's ranks of the group's communicator (grouped, so one
// thread can create several ranks). A no-op if they exist.
Error NcclInitGroup(const std::vector<int64_t>& members,
                    const std::vector<LocalRankSpec>& local,
                    const std::string& unique_id);

// Makes sure every local rank of the group has a registered arena of at
// least `bytes`; returns the size of the arena calls should name. Waits for
// the group's devices to go idle before registering a new window.
ErrorOr<size_t> NcclEnsureArena(const std::vector<int64_t>& members, size_t bytes,
                                size_t min_bytes);

ErrorOr<std::string> NcclNewUniqueId();

struct NcclGroupInfo {
  std::vector<int64_t> members;
  std::vector<int64_t> local_global_ids;
  std::vector<size_t> arena_bytes;  // every arena, ascending
};
std::vector<NcclGroupInfo> NcclGroups();

// At interpreter exit. `orderly` (one process): drain, deregister windows,
// free arenas, destroy communicators. Otherwise peers may be gone or still
// running, so communicators are only aborted (local, never waits) and the
// process's exit frees the memory.
void NcclShutdown(bool orderly);

// What code outside the transport (the bench's raw timer, nccl_timer.cc) may
// see of this process's ranks of a group: context, communicator, rank, the
// largest arena, and the mutex to hold while enqueuing on `comm`. Groups are
// never freed, so the pointers stay valid; `comm` is null after shutdown.
struct NcclRankView {
  CUcontext context;
  ncclComm_t comm;
  int rank;
  char* arena_base;
  size_t arena_bytes;
  std::mutex* comm_mu;
};
ErrorOr<std::vector<NcclRankView>> NcclLocalRanks(const std::vector<int64_t>& members);

// Handler entry: one collective of `kind` for the device `ordinal`;
// `arena_bytes[g]` names the arena of the call's g-th group.
Error NcclCollective(CollectiveKind kind, CUstream stream, int32_t ordinal,
                     const AnyBuffer& in, AnyBuffer& out, Int64Span groups,
                     int64_t group_size, int64_t outer, int64_t inner_bytes,
                     Int64Span arena_bytes);

}  // namespace jax_symm
