// GPU transport, lifetime: NCCL communicators per replica group and, per
// communicator, symmetric window arenas (ncclMemAlloc + ncclCommWindowRegister).
//
// Everything collective (communicator creation, window registration) happens
// in the set-up calls that lowering makes from Python, never inside a handler
// and never during CUDA-graph capture. Handlers (nccl_collectives.cc) only
// look up what set-up made and enqueue work on XLA's stream.
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

#include "ffi_common.h"
#include "nccl_api.h"

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
// least `bytes` (lowering's figure; never recomputed here); returns the size
// of the arena calls should name. Waits for the group's devices to go idle
// before registering a new window.
ErrorOr<size_t> NcclEnsureArena(const std::vector<int64_t>& members, size_t bytes,
                                size_t min_bytes);

ErrorOr<std::string> NcclNewUniqueId();

struct NcclGroupInfo {
  std::vector<int64_t> members;
  std::vector<int64_t> local_global_ids;
  std::vector<size_t> arena_bytes;  // every arena, ascending
  bool symmetric_windows = true;     // every arena of every local rank got a window
  bool stall_watch = true;           // every local rank has a progress beacon
  std::vector<uint32_t> collectives_done;  // per local rank, as its beacon counted
};
std::vector<NcclGroupInfo> NcclGroups();

// The message of every local rank whose communicator the watchdog aborted
// (a peer died or NCCL reported another asynchronous error).
std::vector<std::string> NcclAborted();

// Called by the watchdog (on its thread) with the message of each
// communicator it aborted; null to stop. Set from Python.
using AbortNotifier = void (*)(const std::string& message);
void NcclSetAbortNotifier(AbortNotifier fn);
// Aborts every communicator of this process whose group has one of
// `global_ids` (the devices of a peer process known to be gone), with `cause`
// in the message; returns how many it aborted.
int NcclAbortGroupsWith(const std::vector<int64_t>& global_ids, const std::string& cause);

// The longest a collective may run without progress before the watchdog
// aborts its communicator (JAX_SYMM_GPU_TIMEOUT_S); 0 or less: no bound, and
// communicators created meanwhile get no progress beacon at all.
Error NcclSetStallTimeout(double seconds);  // refuses nan, inf, negatives

// How many rounds the watchdog has polled (it runs once a communicator exists).
uint64_t NcclWatchdogRounds();

// At interpreter exit; stops the watchdog first. `orderly` (one process):
// drain, deregister windows,
// free arenas, destroy communicators. Otherwise peers may be gone or still
// running, so nothing is torn down: the process's exit frees it all.
void NcclShutdown(bool orderly);

// One local rank of a group, held for enqueuing: NCCL forbids using one
// communicator from two threads at once, so `lock` holds the communicator's
// mutex for as long as this object lives. `comm` was read under that lock
// and is not null (a shut-down group is an error), so the arena, freed only
// by shutdown under the same lock, stays valid meanwhile.
struct NcclRank {
  std::unique_lock<std::mutex> lock;
  const NcclApi* api = nullptr;
  CUcontext context = nullptr;
  ncclComm_t comm = nullptr;
  int rank = -1;
  char* arena_base = nullptr;
  size_t arena_bytes = 0;
  // The rank's progress beacon (0/null: none): a handler brackets each NCCL
  // call with MarkBusy/MarkDone, which the watchdog reads.
  CUdeviceptr beacon = 0;
  CUfunction beacon_done = nullptr;
};

// Enqueues, on `stream`, "a collective of `r` is now running" (before its
// NCCL call) and "it finished" (after). A no-op without a beacon.
Error MarkBusy(const NcclRank& r, CUstream stream);
Error MarkDone(const NcclRank& r, CUstream stream);

// The handlers' look-up: the rank of device `global_id` in the group, with
// the arena of exactly `arena_bytes` (the size lowering named).
Error NcclAcquireRank(const std::vector<int64_t>& members, int64_t global_id,
                      size_t arena_bytes, NcclRank* out);

// The bench timer's (nccl_timer.cc): every local rank of the group with its
// largest arena, locked in the group's order as set-up locks them.
Error NcclAcquireLocalRanks(const std::vector<int64_t>& members, std::vector<NcclRank>* out);

}  // namespace jax_symm
