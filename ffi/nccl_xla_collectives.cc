// XLA:GPU handlers of the NCCL transport's XLA path: XLA owns the
// communicator and the memory. Lowering placed the buffers NCCL's symmetric
// kernels need in XLA's collective memory (ncclMemAlloc'd); the Prepare stage
// asks XLA for the call's communicator and for windows on those buffers;
// Execute enqueues one NCCL call on XLA's stream, from XLA's input buffer to
// its output buffer. No copy, no arena, no lock and no communicator of
// jax_symm's own.
//
// Faults: the communicator is XLA's, so jax_symm's watchdog and peer watch
// never abort it (they guard only communicators jax_symm made); XLA's own
// settings bound a collective that makes no progress.
#include "nccl_xla_collectives.h"

#include <string>
#include <vector>

#include "ffi_call.h"
#include "nccl_api.h"
#include "nccl_enqueue.h"
#include "xla_collectives.h"

namespace jax_symm {

// The XLA path's attributes (jax_symm/_nccl.py `lower_xla` emits them).
struct NcclXlaCallAttrs {
  CallAttrs call;
  int64_t windows;           // kWindowOperand | kWindowResult: which buffers lie in windows
  int64_t communication_id;  // XLA's clique: the same for every call of a group
  int64_t window_flags;      // passed to XLA's window registration (ncclCommWindowRegister)
  int64_t pdl_fence;         // 1: break PDL before the NCCL call (NCCL < 2.30.7, nccl_versions.h)
  NcclXlaCallAttrs(Int64Span groups, int64_t group_size, int64_t chunk_bytes, int64_t windows,
                   int64_t communication_id, int64_t window_flags, int64_t pdl_fence)
      : call{groups, group_size, chunk_bytes},
        windows(windows),
        communication_id(communication_id),
        window_flags(window_flags),
        pdl_fence(pdl_fence) {}
};

}  // namespace jax_symm

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    ::jax_symm::NcclXlaCallAttrs,
    ::xla::ffi::StructMember<::jax_symm::Int64Span>("groups"),
    ::xla::ffi::StructMember<int64_t>("group_size"),
    ::xla::ffi::StructMember<int64_t>("chunk_bytes"),
    ::xla::ffi::StructMember<int64_t>("windows"),
    ::xla::ffi::StructMember<int64_t>("communication_id"),
    ::xla::ffi::StructMember<int64_t>("window_flags"),
    ::xla::ffi::StructMember<int64_t>("pdl_fence"));

namespace jax_symm {
namespace {

constexpr int64_t kWindowOperand = 1;
constexpr int64_t kWindowResult = 2;

// Prepare: the communicator for the call's groups, and windows on exactly the
// buffers lowering placed in collective memory (an aliased all-reduce's one
// buffer once).
template <CollectiveKind kKind>
Error Prepare(XlaCollectives xla, int32_t ordinal, AnyBuffer in, ffi::Result<AnyBuffer> out,
              NcclXlaCallAttrs attrs) {
  ErrorOr<CallSite> site = ResolveCall(Platform::kCuda, ordinal, kKind, attrs.call, in, *out);
  if (site.has_error()) return site.error();
  JAX_SYMM_RETURN_IF_ERROR(
      xla.RequestCommunicator(attrs.call.groups, attrs.call.group_size, attrs.communication_id));
  std::vector<xla_abi::MemoryRegion> regions;
  const uint64_t flags = static_cast<uint64_t>(attrs.window_flags);
  if ((attrs.windows & kWindowOperand) && in.size_bytes() > 0) {
    regions.push_back({in.untyped_data(), in.size_bytes(), flags});
  }
  if ((attrs.windows & kWindowResult) && out->size_bytes() > 0 &&
      out->untyped_data() != in.untyped_data()) {
    regions.push_back({out->untyped_data(), out->size_bytes(), flags});
  }
  return xla.RequestWindows(attrs.call.groups, attrs.call.group_size, attrs.communication_id,
                            regions);
}

template <CollectiveKind kKind>
Error Execute(XlaCollectives xla, CUstream_st* stream, int32_t ordinal, AnyBuffer in,
              ffi::Result<AnyBuffer> out, NcclXlaCallAttrs attrs) {
  ErrorOr<CallSite> site = ResolveCall(Platform::kCuda, ordinal, kKind, attrs.call, in, *out);
  if (site.has_error()) return site.error();
  const size_t chunk = site->layout.chunk_bytes();
  if (chunk == 0) return Error::Success();
  const NcclApi* api = LoadedNcclApi();
  if (api == nullptr) return Internal("NCCL is not loaded (jax_symm loads it at lowering)");
  ErrorOr<XlaCollectives::Communicator> comm =
      xla.GetCommunicator(attrs.call.groups, attrs.call.group_size, attrs.communication_id);
  if (comm.has_error()) return comm.error();
  // XLA numbers the clique's ranks itself; where it says, they must be ours
  // (the group's order), or every rank would read the wrong chunks.
  if (comm->rank >= 0 &&
      (comm->rank != site->layout.rank || comm->size != site->layout.world)) {
    return Internal("XLA's communicator has this device as rank " + std::to_string(comm->rank) +
                    " of " + std::to_string(comm->size) + ", jax_symm's group as rank " +
                    std::to_string(site->layout.rank) + " of " +
                    std::to_string(site->layout.world));
  }
  const char* src = static_cast<const char*>(in.untyped_data());
  char* dst = static_cast<char*>(out->untyped_data());
  if (attrs.pdl_fence) {
    // NCCL < 2.30.7 launches its symmetric kernels with programmatic dependent
    // launch but no grid-dependency wait, so the kernel may read its input
    // before the kernel that wrote it has flushed. PDL never overlaps a kernel
    // with a preceding memcpy: one byte copied where NCCL writes the same byte
    // next (the all-gather's own slot; the first byte of the other kinds'
    // outputs, which NCCL overwrites; the all-reduce's aliased buffer onto
    // itself) orders the two.
    char* to = kKind == CollectiveKind::kAllGather ? dst + site->layout.rank * chunk : dst;
    JAX_SYMM_RETURN_IF_ERROR(CudaCheck(
        api->cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(to),
                               reinterpret_cast<CUdeviceptr>(src), 1, stream),
        "cuMemcpyDtoDAsync (PDL fence)"));
  }
  ErrorOr<NcclCall> call =
      PlanNcclCall(kKind, in.element_type(), src, dst, chunk, site->layout.world);
  if (call.has_error()) return call.error();
  ncclComm_t nccl = static_cast<ncclComm_t>(comm->comm);
  return NcclCheck(EnqueueNcclCall(*api, *call, nccl, stream), NcclCallName(kKind), nccl);
}

auto BindPrepare() {
  return ffi::Ffi::BindPrepare()
      .Ctx<XlaCollectives>()
      .Ctx<ffi::DeviceOrdinal>()
      .Arg<AnyBuffer>()
      .Ret<AnyBuffer>()
      .Attrs<NcclXlaCallAttrs>();
}

auto BindExecute() {
  return ffi::Ffi::Bind()
      .Ctx<XlaCollectives>()
      .Ctx<ffi::PlatformStream<CUstream_st*>>()
      .Ctx<ffi::DeviceOrdinal>()
      .Arg<AnyBuffer>()
      .Ret<AnyBuffer>()
      .Attrs<NcclXlaCallAttrs>();
}

}  // namespace

// NcclXla<Name>Prepare, NcclXla<Name> and NcclXla<Name>Captured for each row
// of the table of kinds (ffi_kinds.h).
#define JAX_SYMM_XLA_PATH_HANDLERS(Name, ...)                                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NcclXla##Name##Prepare, Prepare<CollectiveKind::k##Name>,   \
                                BindPrepare());                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NcclXla##Name, Execute<CollectiveKind::k##Name>,            \
                                BindExecute());                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NcclXla##Name##Captured, Execute<CollectiveKind::k##Name>,  \
                                BindExecute(), {ffi::Traits::kCmdBufferCompatible});
JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_XLA_PATH_HANDLERS)
#undef JAX_SYMM_XLA_PATH_HANDLERS

}  // namespace jax_symm
