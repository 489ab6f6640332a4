// XLA:GPU handlers: decode the call, then enqueue copies and one NCCL
// collective on XLA's stream, through the arena lowering prepared.
//
// Declared command-buffer compatible: they only enqueue stream work on
// buffers XLA passed plus arenas that live, at fixed addresses, until exit;
// no allocation, no host synchronisation, nothing that changes per call. So
// XLA may capture them into CUDA graphs, which removes most launch overhead.
#include "nccl_collectives.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "ffi_call.h"
#include "nccl_comms.h"
#include "nccl_enqueue.h"

namespace jax_symm {

// The NCCL handler's attributes (jax_symm/_nccl.py `lower` emits them).
struct NcclCallAttrs {
  CallAttrs call;
  Int64Span arena_bytes;  // per group: the size of the arena lowering prepared
  NcclCallAttrs(Int64Span groups, int64_t group_size, int64_t chunk_bytes,
                Int64Span arena_bytes)
      : call{groups, group_size, chunk_bytes}, arena_bytes(arena_bytes) {}
};

}  // namespace jax_symm

// XLA decodes the attributes dictionary into the struct, by name.
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    ::jax_symm::NcclCallAttrs,
    ::xla::ffi::StructMember<::jax_symm::Int64Span>("groups"),
    ::xla::ffi::StructMember<int64_t>("group_size"),
    ::xla::ffi::StructMember<int64_t>("chunk_bytes"),
    ::xla::ffi::StructMember<::jax_symm::Int64Span>("arena_bytes"));

namespace jax_symm {
namespace {

Error Copy(const NcclApi& api, void* dst, const void* src, size_t bytes, CUstream s) {
  if (bytes == 0 || dst == src) return Error::Success();
  return CudaCheck(api.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst),
                                         reinterpret_cast<CUdeviceptr>(src), bytes, s),
                   "cuMemcpyDtoDAsync");
}

// Enqueues one NCCL call, `enqueue(stream)`, between the progress beacon's
// marks, so the watchdog can bound how long it waits (nccl_comms.h).
template <typename Enqueue>
Error Watched(const NcclRank& r, CUstream stream, const char* what, Enqueue enqueue) {
  JAX_SYMM_RETURN_IF_ERROR(MarkBusy(r, stream));
  JAX_SYMM_RETURN_IF_ERROR(NcclCheck(enqueue(), what, r.comm));
  return MarkDone(r, stream);
}

// One collective of `kind` for the device `ordinal`, on XLA's `stream`.
Error NcclCollective(CollectiveKind kind, CUstream stream, int32_t ordinal,
                     const AnyBuffer& in, AnyBuffer& out, const NcclCallAttrs& attrs) {
  ErrorOr<CallSite> site = ResolveCall(Platform::kCuda, ordinal, kind, attrs.call, in, out);
  if (site.has_error()) return site.error();
  const CallLayout& l = site->layout;
  const size_t chunk = l.chunk_bytes();
  const size_t world = static_cast<size_t>(l.world), rank = static_cast<size_t>(l.rank);
  if (chunk == 0) return Error::Success();
  if (site->group.index >= static_cast<int64_t>(attrs.arena_bytes.size())) {
    return Internal("arena_bytes attribute has no entry for this group");
  }
  NcclRank r;
  JAX_SYMM_RETURN_IF_ERROR(NcclAcquireRank(site->group.members, site->group.members[rank],
                                           static_cast<size_t>(
                                               attrs.arena_bytes[site->group.index]),
                                           &r));
  // The window stages the larger of the two buffers (the all-gather's output,
  // the reduce-scatter's input, the all-reduce's either, the all-to-all's
  // input: both are as large); lowering sized the
  // arena for it, so only the buffers' own sizes are compared here.
  if (std::max(in.size_bytes(), out.size_bytes()) > r.arena_bytes) {
    return Internal("symmetric arena of " + std::to_string(r.arena_bytes) +
                    " bytes too small for this call's " +
                    std::to_string(std::max(in.size_bytes(), out.size_bytes())) + " bytes");
  }
  const NcclApi& api = *r.api;
  ncclComm_t comm = r.comm;
  char* win = r.arena_base;
  const char* src = static_cast<const char*>(in.untyped_data());
  char* dst = static_cast<char*>(out.untyped_data());
  // Which copies NCCL lets us skip, and which the PDL bug keeps (nccl_versions.h).
  const bool send_in_place = api.gather_sends_in_place();
  const bool receive_in_place = api.scatter_receives_in_place();

  // Where the NCCL call reads and writes: the arena, and XLA's buffers where
  // the loaded NCCL lets a call skip a copy.
  const char* send = nullptr;
  char* recv = nullptr;
  const char* result = nullptr;  // what is copied out to `dst` afterwards
  size_t result_bytes = chunk;
  switch (kind) {
    case CollectiveKind::kAllGather:
      send = send_in_place ? src : win + rank * chunk;
      if (!send_in_place) {
        JAX_SYMM_RETURN_IF_ERROR(Copy(api, win + rank * chunk, src, chunk, stream));
      }
      recv = win;
      result = win;
      result_bytes = chunk * world;
      break;
    case CollectiveKind::kReduceScatter:
      JAX_SYMM_RETURN_IF_ERROR(Copy(api, win, src, chunk * world, stream));
      send = win;
      recv = receive_in_place ? dst : win + rank * chunk;
      result = recv;
      break;
    case CollectiveKind::kAllReduce:
      JAX_SYMM_RETURN_IF_ERROR(Copy(api, win, src, chunk, stream));
      send = win;
      recv = win;
      result = win;
      break;
    case CollectiveKind::kAllToAll:
      // The send side in the window, as the reduce-scatter's: world chunks,
      // chunk j for rank j. NCCL has no symmetric all-to-all kernel and
      // never runs one in place, so it receives straight into XLA's output
      // (the arena holds one side: Kind.staged_chunks), and nothing is
      // copied out.
      JAX_SYMM_RETURN_IF_ERROR(Copy(api, win, src, chunk * world, stream));
      send = win;
      recv = dst;
      result = dst;
      break;
  }
  ErrorOr<NcclCall> call = PlanNcclCall(kind, in.element_type(), send, recv, chunk, l.world);
  if (call.has_error()) return call.error();
  JAX_SYMM_RETURN_IF_ERROR(Watched(r, stream, NcclCallName(kind), [&] {
    return EnqueueNcclCall(api, *call, comm, stream);
  }));
  return Copy(api, dst, result, result_bytes, stream);
}

template <CollectiveKind kKind>
Error NcclHandler(CUstream_st* stream, int32_t ordinal, AnyBuffer in,
                  ffi::Result<AnyBuffer> out, NcclCallAttrs attrs) {
  return NcclCollective(kKind, stream, ordinal, in, *out, attrs);
}

auto BindNcclCall() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::PlatformStream<CUstream_st*>>()
      .Ctx<ffi::DeviceOrdinal>()
      .Arg<AnyBuffer>()
      .Ret<AnyBuffer>()
      .Attrs<NcclCallAttrs>();
}

}  // namespace

// Nccl<Name> for each row of the table of kinds (ffi_kinds.h).
#define JAX_SYMM_DEFINE_NCCL_HANDLER(Name, ...)                                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(Nccl##Name, NcclHandler<CollectiveKind::k##Name>, \
                                BindNcclCall(), {ffi::Traits::kCmdBufferCompatible});
JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_DEFINE_NCCL_HANDLER)
#undef JAX_SYMM_DEFINE_NCCL_HANDLER

}  // namespace jax_symm
