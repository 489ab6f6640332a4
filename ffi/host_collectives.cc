// XLA:CPU handlers: resolve the call site, then hand the data to the host
// window that lowering prepared for (call site, group).
#include <cstring>

#include "call_site.h"
#include "host_collectives.h"
#include "host_window.h"

namespace jax_symm {
namespace {

Error HostCollective(CollectiveKind kind, int64_t run_id, int32_t ordinal, AnyBuffer in,
                     ffi::Result<AnyBuffer> out, Int64Span groups,
                     int64_t group_size, int64_t site_id, int64_t outer,
                     int64_t inner_bytes) {
  // all-gather grows its data world-fold, reduce-scatter shrinks it, and
  // all-reduce keeps it (its layout is one [1][bytes] chunk).
  const bool in_is_world = kind == CollectiveKind::kReduceScatter;
  const bool out_is_world = kind == CollectiveKind::kAllGather;
  ErrorOr<CallSite> site =
      ResolveCallSite(Platform::kHost, ordinal, groups, group_size, outer, inner_bytes,
                      in_is_world, out_is_world, in, *out);
  if (site.has_error()) return site.error();
  const CallLayout& layout = site->layout;
  if (layout.world == 1) {  // nothing to exchange
    std::memcpy(out->untyped_data(), in.untyped_data(), in.size_bytes());
    return Error::Success();
  }
  ErrorOr<HostWindow*> window = HostWindow::Find(site_id, site->group.members);
  if (window.has_error()) return window.error();
  switch (kind) {
    case CollectiveKind::kAllGather:
      return (*window)->AllGather(layout, run_id, in.untyped_data(), out->untyped_data());
    case CollectiveKind::kReduceScatter:
      return (*window)->ReduceScatter(layout, run_id, in.element_type(),
                                      in.untyped_data(), out->untyped_data());
    case CollectiveKind::kAllReduce:
      return (*window)->AllReduce(layout, run_id, in.element_type(), in.untyped_data(),
                                  out->untyped_data());
  }
  return Internal("unknown collective kind");
}

template <CollectiveKind kKind>
Error HostHandler(ffi::RunId run, int32_t ordinal, ffi::Token, AnyBuffer in,
                  ffi::Result<ffi::Token>, ffi::Result<AnyBuffer> out,
                  Int64Span groups, int64_t group_size, int64_t site,
                  int64_t outer, int64_t inner_bytes) {
  return HostCollective(kKind, run.run_id, ordinal, in, out, groups, group_size, site,
                        outer, inner_bytes);
}

auto BindHostCall() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::RunId>()
      .Ctx<ffi::DeviceOrdinal>()
      .Arg<ffi::Token>()  // orders this call after the device's previous one
      .Arg<AnyBuffer>()
      .Ret<ffi::Token>()
      .Ret<AnyBuffer>()
      .Attr<Int64Span>("groups")
      .Attr<int64_t>("group_size")
      .Attr<int64_t>("site")
      .Attr<int64_t>("outer")
      .Attr<int64_t>("inner_bytes");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HostAllGather, HostHandler<CollectiveKind::kAllGather>,
                              BindHostCall());
XLA_FFI_DEFINE_HANDLER_SYMBOL(HostReduceScatter,
                              HostHandler<CollectiveKind::kReduceScatter>,
                              BindHostCall());
XLA_FFI_DEFINE_HANDLER_SYMBOL(HostAllReduce, HostHandler<CollectiveKind::kAllReduce>,
                              BindHostCall());

}  // namespace jax_symm
