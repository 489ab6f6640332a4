// XLA:GPU handlers: enqueue copies and one NCCL collective on XLA's stream.
//
// Declared command-buffer compatible: they only enqueue stream work on
// buffers XLA passed plus arenas that live, at fixed addresses, until exit;
// no allocation, no host synchronisation, nothing that changes per call. So
// XLA may capture them into CUDA graphs, which removes most launch overhead.
#include "cuda_collectives.h"
#include "nccl_transport.h"

namespace jax_symm {
namespace {

template <CollectiveKind kKind>
Error NcclHandler(CUstream_st* stream, int32_t ordinal, AnyBuffer in,
                  ffi::Result<AnyBuffer> out, Int64Span groups, int64_t group_size,
                  int64_t outer, int64_t inner_bytes, Int64Span arena_bytes) {
  return NcclCollective(kKind, stream, ordinal, in, *out, groups, group_size, outer,
                        inner_bytes, arena_bytes);
}

auto BindNcclCall() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::PlatformStream<CUstream_st*>>()
      .Ctx<ffi::DeviceOrdinal>()
      .Arg<AnyBuffer>()
      .Ret<AnyBuffer>()
      .Attr<Int64Span>("groups")
      .Attr<int64_t>("group_size")
      .Attr<int64_t>("outer")
      .Attr<int64_t>("inner_bytes")
      .Attr<Int64Span>("arena_bytes");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NcclAllGather, NcclHandler<CollectiveKind::kAllGather>,
                              BindNcclCall(), {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(NcclReduceScatter, NcclHandler<CollectiveKind::kReduceScatter>,
                              BindNcclCall(), {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(NcclAllReduce, NcclHandler<CollectiveKind::kAllReduce>,
                              BindNcclCall(), {ffi::Traits::kCmdBufferCompatible});

}  // namespace jax_symm
