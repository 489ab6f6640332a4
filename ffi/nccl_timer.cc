#include "nccl_timer.h"

#include <mutex>
#include <utility>

#include "nccl_api.h"
#include "nccl_comms.h"
#include "nccl_enqueue.h"
#include "nccl_types.h"

namespace jax_symm {
namespace {

// NCCL's type and element size for a numpy dtype name, from the handlers'
// list of sums (nccl_types.h): the timer runs NCCL's own element types, so
// not complex numbers (pairs of NCCL elements).
ErrorOr<std::pair<int, size_t>> NcclTypeByName(const std::string& dtype) {
  std::string known;
  for (const NcclSumTypeEntry& t : kNcclSumTypes) {
    if (t.lanes != 1) continue;
    if (dtype == t.name) return std::pair<int, size_t>(t.nccl_type, t.nccl_bytes);
    known += (known.empty() ? "" : ", ") + std::string(t.name);
  }
  return InvalidArgument("raw NCCL timer: no NCCL type for dtype '" + dtype + "' (" + known +
                         ")");
}

ErrorOr<CollectiveKind> KindByName(const std::string& op) {
  ErrorOr<CollectiveKind> kind = CollectiveKindByName(op);
  if (kind.has_error()) {
    return InvalidArgument("raw NCCL timer: unknown op '" + op + "' (" +
                           CollectiveKindNames() + ")");
  }
  return kind;
}

// Streams created on the ranks' contexts, destroyed on every path. Release()
// is the checked teardown of the normal path; the destructor is the
// best-effort one of error paths, where the first error is what gets reported
// (CUDA defers destroying a stream or event until its pending work is done).
class Streams {
 public:
  explicit Streams(const NcclApi& api) : api_(api) {}
  ~Streams() {
    for (auto& [ctx, s] : streams_) {
      if (api_.cuCtxSetCurrent(ctx) == 0) api_.cuStreamDestroy(s);
    }
  }
  Streams(const Streams&) = delete;
  Streams& operator=(const Streams&) = delete;

  ErrorOr<CUstream> Create(CUcontext ctx) {
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api_.cuCtxSetCurrent(ctx), "cuCtxSetCurrent"));
    CUstream s = nullptr;
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api_.cuStreamCreate(&s, /*non-blocking*/ 1),
                                       "cuStreamCreate"));
    streams_.emplace_back(ctx, s);
    return s;
  }

  // Waits for every stream, destroys them all; the first error wins.
  Error Release() {
    Error first = Error::Success();
    auto keep = [&first](Error e) {
      if (first.success() && e.failure()) first = std::move(e);
    };
    for (auto& [ctx, s] : streams_) {
      Error current = CudaCheck(api_.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
      if (current.success()) {
        keep(CudaCheck(api_.cuStreamSynchronize(s), "cuStreamSynchronize"));
        keep(CudaCheck(api_.cuStreamDestroy(s), "cuStreamDestroy"));
      } else {
        keep(std::move(current));
      }
    }
    streams_.clear();
    return first;
  }

 private:
  const NcclApi& api_;
  std::vector<std::pair<CUcontext, CUstream>> streams_;
};

// One CUDA event on `ctx`, destroyed on every path (see Streams).
class Event {
 public:
  Event(const NcclApi& api, CUcontext ctx) : api_(api), ctx_(ctx) {}
  ~Event() {
    if (event_ != nullptr && api_.cuCtxSetCurrent(ctx_) == 0) api_.cuEventDestroy(event_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  Error Create() {
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api_.cuCtxSetCurrent(ctx_), "cuCtxSetCurrent"));
    return CudaCheck(api_.cuEventCreate(&event_, 0), "cuEventCreate");
  }
  void* get() const { return event_; }
  Error Release() {
    if (event_ == nullptr) return Error::Success();
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api_.cuCtxSetCurrent(ctx_), "cuCtxSetCurrent"));
    void* e = event_;
    event_ = nullptr;
    return CudaCheck(api_.cuEventDestroy(e), "cuEventDestroy");
  }

 private:
  const NcclApi& api_;
  CUcontext ctx_;
  void* event_ = nullptr;
};

}  // namespace

ErrorOr<std::vector<double>> NcclTimeRaw(const std::vector<int64_t>& members,
                                         const std::string& op, size_t bytes_per_rank,
                                         const std::string& dtype, int iters, int repeats) {
  ErrorOr<CollectiveKind> kind = KindByName(op);
  if (kind.has_error()) return kind.error();
  ErrorOr<std::pair<int, size_t>> type = NcclTypeByName(dtype);
  if (type.has_error()) return type.error();
  const int nccl_type = type->first;
  const size_t elt = type->second;
  if (iters < 1 || repeats < 1) {
    return InvalidArgument("raw NCCL timer: iters and repeats must be >= 1");
  }
  if (bytes_per_rank == 0 || bytes_per_rank % elt != 0) {
    return InvalidArgument("raw NCCL timer: " + std::to_string(bytes_per_rank) +
                           " bytes per rank is not a whole number of " + dtype + " elements");
  }
  // Arguments first, so that a wrong name fails the same way with or without a GPU.
  // Every local rank's communicator stays locked (in the group's order, as
  // set-up locks them) until the last timed call is enqueued: NCCL forbids two
  // threads on one communicator at once.
  std::vector<NcclRank> ranks;
  JAX_SYMM_RETURN_IF_ERROR(NcclAcquireLocalRanks(members, &ranks));
  if (ranks.empty()) return Internal("no local rank in group " + GroupToString(members));
  const NcclApi& api = *ranks[0].api;
  const size_t world = members.size();
  const size_t count = bytes_per_rank / elt;
  // The all-to-all holds both sides in the arena (see `enqueue`).
  const size_t need = bytes_per_rank * world * (*kind == CollectiveKind::kAllToAll ? 2 : 1);
  for (const NcclRank& r : ranks) {
    if (need > r.arena_bytes) {
      return InvalidArgument("raw NCCL timer: the arena of " + std::to_string(r.arena_bytes) +
                             " bytes is smaller than the " + std::to_string(need) +
                             " bytes this call needs; grow it first");
    }
  }

  Streams streams(api);
  std::vector<CUstream> stream(ranks.size());
  for (size_t i = 0; i < ranks.size(); ++i) {
    ErrorOr<CUstream> s = streams.Create(ranks[i].context);
    if (s.has_error()) return s.error();
    stream[i] = *s;
  }
  Event start(api, ranks[0].context), stop(api, ranks[0].context);
  JAX_SYMM_RETURN_IF_ERROR(start.Create());
  JAX_SYMM_RETURN_IF_ERROR(stop.Create());

  // One collective on every local rank, in one NCCL group. Ends the group
  // whatever happened inside it, keeping the first error.
  auto enqueue = [&]() -> Error {
    JAX_SYMM_RETURN_IF_ERROR(NcclCheck(api.ncclGroupStart(), "ncclGroupStart"));
    Error body = Error::Success();
    for (size_t i = 0; i < ranks.size() && body.success(); ++i) {
      const NcclRank& r = ranks[i];
      char* win = r.arena_base;
      const size_t me = static_cast<size_t>(r.rank);
      body = CudaCheck(api.cuCtxSetCurrent(r.context), "cuCtxSetCurrent");
      if (body.failure()) break;
      // Where the call reads and writes in the arena: in place, as NCCL
      // allows for the gather and the sums; the all-to-all's two sides side
      // by side (NCCL never runs it in place).
      const void* send = win;
      void* recv = win;
      switch (*kind) {
        case CollectiveKind::kAllGather: send = win + me * bytes_per_rank; break;
        case CollectiveKind::kReduceScatter: recv = win + me * bytes_per_rank; break;
        case CollectiveKind::kAllReduce: break;
        case CollectiveKind::kAllToAll: recv = win + world * bytes_per_rank; break;
      }
      const NcclCall call{*kind, send, recv, count, nccl_type, static_cast<int>(world),
                          bytes_per_rank};
      body = NcclCheck(EnqueueNcclCall(api, call, r.comm, stream[i]), NcclCallName(*kind),
                       r.comm);
    }
    Error end = NcclCheck(api.ncclGroupEnd(), "ncclGroupEnd");
    return body.failure() ? body : end;
  };

  for (int w = 0; w < 5; ++w) JAX_SYMM_RETURN_IF_ERROR(enqueue());
  std::vector<double> out;
  out.reserve(repeats);
  for (int rep = 0; rep < repeats; ++rep) {
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuCtxSetCurrent(ranks[0].context), "cuCtxSetCurrent"));
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuEventRecord(start.get(), stream[0]), "cuEventRecord"));
    for (int it = 0; it < iters; ++it) JAX_SYMM_RETURN_IF_ERROR(enqueue());
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuCtxSetCurrent(ranks[0].context), "cuCtxSetCurrent"));
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuEventRecord(stop.get(), stream[0]), "cuEventRecord"));
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuEventSynchronize(stop.get()), "cuEventSynchronize"));
    float ms = 0;
    JAX_SYMM_RETURN_IF_ERROR(
        CudaCheck(api.cuEventElapsedTime(&ms, start.get(), stop.get()), "cuEventElapsedTime"));
    out.push_back(ms * 1000.0 / iters);
  }
  for (NcclRank& r : ranks) r.lock.unlock();  // the rest only waits and frees
  JAX_SYMM_RETURN_IF_ERROR(streams.Release());
  JAX_SYMM_RETURN_IF_ERROR(start.Release());
  JAX_SYMM_RETURN_IF_ERROR(stop.Release());
  return out;
}

}  // namespace jax_symm
