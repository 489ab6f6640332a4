#include "nccl_transport.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "call_site.h"

namespace jax_symm {
namespace {

struct Arena {
  char* base = nullptr;
  size_t bytes = 0;
  ncclWindow_t window = nullptr;
};

struct LocalRank {
  int64_t global_id = -1;
  int cuda_ordinal = -1;
  int rank = -1;
  CUcontext context = nullptr;
  ncclComm_t comm = nullptr;       // null once shut down
  std::map<size_t, Arena> arenas;  // by size; read and grown under groups_mu
  // NCCL forbids using one communicator from two threads at once: held
  // around every enqueue (handlers) and registration (set-up) on `comm`.
  std::unique_ptr<std::mutex> comm_mu = std::make_unique<std::mutex>();
};

struct Group {
  std::vector<int64_t> members;
  std::vector<LocalRank> local;
};

// Locking: set-up calls (init, arena growth, shutdown) are serialised by
// setup_mu and may block for long (device drains, collective registration);
// groups_mu only guards the maps for short look-ups, so a handler is never
// stuck behind a set-up call that waits for that handler's own kernel.
// Groups are never freed (a handler may hold a LocalRank* during shutdown).
std::mutex setup_mu;
std::mutex groups_mu;
std::map<std::vector<int64_t>, std::unique_ptr<Group>>& Groups() {
  static auto* groups = new std::map<std::vector<int64_t>, std::unique_ptr<Group>>();
  return *groups;
}

ErrorOr<const CudaApi*> Api() {
  const CudaApi* api = LoadedCudaApi();
  if (api == nullptr) return Internal("NCCL transport used before jax_symm loaded NCCL");
  return api;
}

Error MakeCurrent(const CudaApi& api, LocalRank& r) {
  if (r.context == nullptr) {
    CUdevice dev;
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuDeviceGet(&dev, r.cuda_ordinal), "cuDeviceGet"));
    JAX_SYMM_RETURN_IF_ERROR(
        CudaCheck(api.cuDevicePrimaryCtxRetain(&r.context, dev), "cuDevicePrimaryCtxRetain"));
  }
  return CudaCheck(api.cuCtxSetCurrent(r.context), "cuCtxSetCurrent");
}

// Ends an NCCL group whether or not its body failed, keeping the first error.
Error EndGroup(const CudaApi& api, Error body) {
  Error end = NcclCheck(api.ncclGroupEnd(), "ncclGroupEnd");
  return body.failure() ? body : end;
}

Error Copy(const CudaApi& api, void* dst, const void* src, size_t bytes, CUstream s) {
  if (bytes == 0 || dst == src) return Error::Success();
  return CudaCheck(api.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst),
                                         reinterpret_cast<CUdeviceptr>(src), bytes, s),
                   "cuMemcpyDtoDAsync");
}

// Copies `height` rows of `width` bytes between pitched device layouts.
Error Copy2D(const CudaApi& api, void* dst, size_t dst_pitch, const void* src,
             size_t src_pitch, size_t width, size_t height, CUstream s) {
  if (height == 1) return Copy(api, dst, src, width, s);
  CudaMemcpy2D c;
  std::memset(&c, 0, sizeof(c));
  c.srcMemoryType = kCuMemoryTypeDevice;
  c.srcDevice = reinterpret_cast<CUdeviceptr>(src);
  c.srcPitch = src_pitch;
  c.dstMemoryType = kCuMemoryTypeDevice;
  c.dstDevice = reinterpret_cast<CUdeviceptr>(dst);
  c.dstPitch = dst_pitch;
  c.WidthInBytes = width;
  c.Height = height;
  return CudaCheck(api.cuMemcpy2DAsync(&c, s), "cuMemcpy2DAsync");
}

// NCCL's type and element count for a sum over `bytes` of `dtype`.
ErrorOr<std::pair<int, size_t>> NcclSumType(ffi::DataType dtype, size_t bytes) {
  using DT = ffi::DataType;
  switch (dtype) {
    case DT::F16: return std::pair<int, size_t>(kNcclFloat16, bytes / 2);
    case DT::BF16: return std::pair<int, size_t>(kNcclBfloat16, bytes / 2);
    case DT::F32: return std::pair<int, size_t>(kNcclFloat32, bytes / 4);
    case DT::F64: return std::pair<int, size_t>(kNcclFloat64, bytes / 8);
    case DT::C64: return std::pair<int, size_t>(kNcclFloat32, bytes / 4);  // re, im
    case DT::C128: return std::pair<int, size_t>(kNcclFloat64, bytes / 8);
    case DT::S8: return std::pair<int, size_t>(kNcclInt8, bytes);
    case DT::U8: return std::pair<int, size_t>(kNcclUint8, bytes);
    case DT::S32: return std::pair<int, size_t>(kNcclInt32, bytes / 4);
    case DT::U32: return std::pair<int, size_t>(kNcclUint32, bytes / 4);
    case DT::S64: return std::pair<int, size_t>(kNcclInt64, bytes / 8);
    case DT::U64: return std::pair<int, size_t>(kNcclUint64, bytes / 8);
    default:
      return InvalidArgument("NCCL has no sum for element type " +
                             std::to_string(static_cast<int>(dtype)));
  }
}

ErrorOr<std::pair<LocalRank*, Arena>> Lookup(const std::vector<int64_t>& members,
                                             int64_t global_id, size_t arena_bytes) {
  std::lock_guard<std::mutex> lock(groups_mu);
  auto it = Groups().find(members);
  if (it == Groups().end()) {
    return Internal("no NCCL communicator for group " + GroupToString(members) +
                    " (it is created when a program using it is lowered)");
  }
  for (LocalRank& r : it->second->local) {
    if (r.global_id != global_id) continue;
    auto a = r.arenas.find(arena_bytes);
    if (a == r.arenas.end()) {
      return Internal("no symmetric arena of " + std::to_string(arena_bytes) +
                      " bytes for device " + std::to_string(global_id));
    }
    return std::make_pair(&r, a->second);
  }
  return Internal("device " + std::to_string(global_id) + " has no rank in group " +
                  GroupToString(members));
}

}  // namespace

ErrorOr<std::string> NcclNewUniqueId() {
  ErrorOr<const CudaApi*> api = Api();
  if (api.has_error()) return api.error();
  ncclUniqueId id;
  JAX_SYMM_RETURN_IF_ERROR(NcclCheck((*api)->ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return std::string(id.internal, sizeof(id.internal));
}

Error NcclInitGroup(const std::vector<int64_t>& members,
                    const std::vector<LocalRankSpec>& local, const std::string& unique_id) {
  ErrorOr<const CudaApi*> api_or = Api();
  if (api_or.has_error()) return api_or.error();
  const CudaApi& api = **api_or;
  std::lock_guard<std::mutex> setup(setup_mu);
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    if (Groups().count(members)) return Error::Success();
  }
  if (unique_id.size() != sizeof(ncclUniqueId)) return InvalidArgument("bad NCCL unique id");
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));

  auto group = std::make_unique<Group>();
  group->members = members;
  for (const LocalRankSpec& spec : local) {
    LocalRank r;
    r.global_id = spec.global_id;
    r.cuda_ordinal = spec.cuda_ordinal;
    r.rank = spec.rank;
    // Contexts first, outside the NCCL group, so the group holds NCCL calls only.
    JAX_SYMM_RETURN_IF_ERROR(MakeCurrent(api, r));
    group->local.push_back(std::move(r));
  }
  Error body = NcclCheck(api.ncclGroupStart(), "ncclGroupStart");
  if (body.failure()) return body;
  for (LocalRank& r : group->local) {
    body = CudaCheck(api.cuCtxSetCurrent(r.context), "cuCtxSetCurrent");
    if (body.success()) {
      body = NcclCheck(
          api.ncclCommInitRank(&r.comm, static_cast<int>(members.size()), id, r.rank),
          "ncclCommInitRank");
    }
    if (body.failure()) break;
  }
  Error end = EndGroup(api, std::move(body));
  if (end.failure()) {
    for (LocalRank& r : group->local) {
      if (r.comm) api.ncclCommAbort(r.comm);  // local; does not wait for peers
    }
    return end;
  }
  std::lock_guard<std::mutex> lock(groups_mu);
  Groups()[members] = std::move(group);
  return Error::Success();
}

ErrorOr<size_t> NcclEnsureArena(const std::vector<int64_t>& members, size_t bytes,
                                size_t min_bytes) {
  ErrorOr<const CudaApi*> api_or = Api();
  if (api_or.has_error()) return api_or.error();
  const CudaApi& api = **api_or;
  if (!api.symmetric_windows()) return Internal("this NCCL has no symmetric windows");
  std::lock_guard<std::mutex> setup(setup_mu);
  Group* group = nullptr;
  size_t have = 0;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    auto it = Groups().find(members);
    if (it == Groups().end()) return Internal("no communicator for " + GroupToString(members));
    group = it->second.get();
    const auto& arenas = group->local.front().arenas;
    have = arenas.empty() ? 0 : arenas.rbegin()->first;
  }
  if (have >= bytes && have > 0) return have;

  size_t size = std::max<size_t>(min_bytes, 1 << 20);
  while (size < bytes) size *= 2;
  // Registration is collective and must not race NCCL kernels in flight on
  // these communicators (a reported deadlock): let the devices drain first.
  // No lock is held here, so handlers still launching earlier work (whose
  // kernels the drain waits for) can proceed.
  for (LocalRank& r : group->local) {
    JAX_SYMM_RETURN_IF_ERROR(MakeCurrent(api, r));
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(api.cuCtxSynchronize(), "cuCtxSynchronize"));
  }
  std::vector<Arena> fresh(group->local.size());
  for (size_t i = 0; i < group->local.size(); ++i) {
    JAX_SYMM_RETURN_IF_ERROR(MakeCurrent(api, group->local[i]));
    void* ptr = nullptr;
    Error err = NcclCheck(api.ncclMemAlloc(&ptr, size), "ncclMemAlloc", group->local[i].comm);
    if (err.failure()) {  // a failed ncclMemAlloc hands back garbage: free only ours
      for (size_t j = 0; j < i; ++j) api.ncclMemFree(fresh[j].base);
      return Internal(std::string(err.message()) + " (asked for " + std::to_string(size) +
                      " bytes; lower JAX_SYMM_ARENA_MB or free GPU memory)");
    }
    fresh[i].base = static_cast<char*>(ptr);
    fresh[i].bytes = size;
  }
  std::vector<std::unique_lock<std::mutex>> comm_locks;
  for (LocalRank& r : group->local) comm_locks.emplace_back(*r.comm_mu);
  Error body = NcclCheck(api.ncclGroupStart(), "ncclGroupStart");
  if (body.failure()) return body;
  for (size_t i = 0; i < group->local.size() && body.success(); ++i) {
    body = CudaCheck(api.cuCtxSetCurrent(group->local[i].context), "cuCtxSetCurrent");
    if (body.success()) {
      body = NcclCheck(api.ncclCommWindowRegister(group->local[i].comm, fresh[i].base, size,
                                                  &fresh[i].window, kNcclWinCollSymmetric),
                       "ncclCommWindowRegister", group->local[i].comm);
    }
  }
  Error end = EndGroup(api, std::move(body));
  comm_locks.clear();
  // On failure the windows' state is unknown, so the memory is kept, not
  // freed under a possibly registered window.
  if (end.failure()) return end;
  std::lock_guard<std::mutex> lock(groups_mu);
  for (size_t i = 0; i < group->local.size(); ++i) group->local[i].arenas[size] = fresh[i];
  return size;
}

std::vector<NcclGroupInfo> NcclGroups() {
  std::lock_guard<std::mutex> lock(groups_mu);
  std::vector<NcclGroupInfo> out;
  for (auto& [members, group] : Groups()) {
    NcclGroupInfo info;
    info.members = members;
    for (const LocalRank& r : group->local) info.local_global_ids.push_back(r.global_id);
    if (!group->local.empty()) {
      for (auto& [size, arena] : group->local[0].arenas) info.arena_bytes.push_back(size);
    }
    out.push_back(std::move(info));
  }
  return out;
}

void NcclShutdown(bool orderly) {
  const CudaApi* api = LoadedCudaApi();
  if (api == nullptr) return;
  std::lock_guard<std::mutex> setup(setup_mu);
  std::vector<Group*> groups;
  {
    std::lock_guard<std::mutex> lock(groups_mu);
    for (auto& [members, group] : Groups()) groups.push_back(group.get());
  }
  for (Group* group : groups) {
    std::vector<std::unique_lock<std::mutex>> comm_locks;
    for (LocalRank& r : group->local) comm_locks.emplace_back(*r.comm_mu);
    if (!orderly) {
      // Peers may be gone or still running: tear down locally, never wait.
      for (LocalRank& r : group->local) {
        if (r.comm) api->ncclCommAbort(r.comm);
        r.comm = nullptr;
      }
      continue;
    }
    for (LocalRank& r : group->local) {
      if (MakeCurrent(*api, r).success()) api->cuCtxSynchronize();
    }
    // Deregistration is collective across the group's local ranks.
    if (api->ncclGroupStart() == 0) {
      for (LocalRank& r : group->local) {
        api->cuCtxSetCurrent(r.context);
        for (auto& [size, arena] : r.arenas) {
          if (arena.window && r.comm) api->ncclCommWindowDeregister(r.comm, arena.window);
        }
      }
      api->ncclGroupEnd();
    }
    std::lock_guard<std::mutex> lock(groups_mu);
    for (LocalRank& r : group->local) {
      api->cuCtxSetCurrent(r.context);
      for (auto& [size, arena] : r.arenas) api->ncclMemFree(arena.base);
      r.arenas.clear();
      if (r.comm) api->ncclCommDestroy(r.comm);
      r.comm = nullptr;
    }
  }
}

Error NcclCollective(CollectiveKind kind, CUstream stream, int32_t ordinal,
                     const AnyBuffer& in, AnyBuffer& out, Int64Span groups,
                     int64_t group_size, int64_t outer, int64_t inner_bytes,
                     Int64Span arena_bytes) {
  ErrorOr<const CudaApi*> api_or = Api();
  if (api_or.has_error()) return api_or.error();
  const CudaApi& api = **api_or;
  ErrorOr<CallSite> site =
      ResolveCallSite(Platform::kCuda, ordinal, groups, group_size, outer, inner_bytes,
                      kind == CollectiveKind::kReduceScatter,
                      kind == CollectiveKind::kAllGather, in, out);
  if (site.has_error()) return site.error();
  const CallLayout& l = site->layout;
  const size_t chunk = l.chunk_bytes(), inner = static_cast<size_t>(l.inner_bytes);
  const size_t world = static_cast<size_t>(l.world), rank = static_cast<size_t>(l.rank);
  if (chunk == 0) return Error::Success();
  if (site->group.index >= static_cast<int64_t>(arena_bytes.size())) {
    return Internal("arena_bytes attribute has no entry for this group");
  }
  ErrorOr<std::pair<LocalRank*, Arena>> found =
      Lookup(site->group.members, site->group.members[rank],
             static_cast<size_t>(arena_bytes[site->group.index]));
  if (found.has_error()) return found.error();
  std::lock_guard<std::mutex> comm_lock(*found->first->comm_mu);
  ncclComm_t comm = found->first->comm;
  if (comm == nullptr) return Internal("the NCCL communicator has been shut down");
  char* win = found->second.base;
  const size_t needed = kind == CollectiveKind::kAllReduce ? chunk : chunk * world;
  if (needed > found->second.bytes) return Internal("symmetric arena too small for this call");
  const char* src = static_cast<const char*>(in.untyped_data());
  char* dst = static_cast<char*>(out.untyped_data());
  // From NCCL 2.29 only the all-gather receive buffer and the reduce-scatter
  // send buffer must lie in a window, which saves one copy each.
  const bool send_anywhere = api.nccl_version >= 22900;

  switch (kind) {
    case CollectiveKind::kAllGather: {
      const char* send = src;
      if (!send_anywhere) {
        JAX_SYMM_RETURN_IF_ERROR(Copy(api, win + rank * chunk, src, chunk, stream));
        send = win + rank * chunk;
      }
      JAX_SYMM_RETURN_IF_ERROR(NcclCheck(
          api.ncclAllGather(send, win, chunk, kNcclInt8, comm, stream), "ncclAllGather", comm));
      // The window holds [world][outer][inner]; the output wants [outer][world][inner].
      for (size_t q = 0; q < (outer == 1 ? 1 : world); ++q) {
        if (outer == 1) {
          JAX_SYMM_RETURN_IF_ERROR(Copy(api, dst, win, chunk * world, stream));
        } else {
          JAX_SYMM_RETURN_IF_ERROR(Copy2D(api, dst + q * inner, world * inner, win + q * chunk,
                                          inner, inner, outer, stream));
        }
      }
      return Error::Success();
    }
    case CollectiveKind::kReduceScatter: {
      ErrorOr<std::pair<int, size_t>> type = NcclSumType(in.element_type(), chunk);
      if (type.has_error()) return type.error();
      // The input is [outer][world][inner]; NCCL wants [world][outer][inner].
      for (size_t q = 0; q < (outer == 1 ? 1 : world); ++q) {
        if (outer == 1) {
          JAX_SYMM_RETURN_IF_ERROR(Copy(api, win, src, chunk * world, stream));
        } else {
          JAX_SYMM_RETURN_IF_ERROR(Copy2D(api, win + q * chunk, inner, src + q * inner,
                                          world * inner, inner, outer, stream));
        }
      }
      char* recv = send_anywhere ? dst : win + rank * chunk;
      JAX_SYMM_RETURN_IF_ERROR(NcclCheck(
          api.ncclReduceScatter(win, recv, type->second, type->first, kNcclSum, comm, stream),
          "ncclReduceScatter", comm));
      return Copy(api, dst, recv, chunk, stream);
    }
    case CollectiveKind::kAllReduce: {
      ErrorOr<std::pair<int, size_t>> type = NcclSumType(in.element_type(), chunk);
      if (type.has_error()) return type.error();
      JAX_SYMM_RETURN_IF_ERROR(Copy(api, win, src, chunk, stream));
      JAX_SYMM_RETURN_IF_ERROR(NcclCheck(
          api.ncclAllReduce(win, win, type->second, type->first, kNcclSum, comm, stream),
          "ncclAllReduce", comm));
      return Copy(api, dst, win, chunk, stream);
    }
  }
  return Internal("unknown collective kind");
}

ErrorOr<std::vector<NcclRankView>> NcclLocalRanks(const std::vector<int64_t>& members) {
  std::lock_guard<std::mutex> lock(groups_mu);
  auto it = Groups().find(members);
  if (it == Groups().end()) {
    return Internal("no NCCL communicator for group " + GroupToString(members));
  }
  std::vector<NcclRankView> out;
  for (LocalRank& r : it->second->local) {
    if (r.comm == nullptr) return Internal("group " + GroupToString(members) + " is shut down");
    if (r.arenas.empty()) return Internal("no symmetric arena for " + GroupToString(members));
    const Arena& a = r.arenas.rbegin()->second;
    out.push_back({r.context, r.comm, r.rank, a.base, a.bytes, r.comm_mu.get()});
  }
  return out;
}

}  // namespace jax_symm
