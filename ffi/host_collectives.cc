// XLA:CPU handlers: decode the call, then hand the data to the host window
// that lowering prepared for (call site, group).
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "ffi_call.h"
#include "host_collectives.h"
#include "host_window.h"

namespace jax_symm {

// The host handler's attributes (jax_symm/_host.py `lower` emits them).
struct HostCallAttrs {
  CallAttrs call;
  int64_t site;  // the call site, numbered at lowering; names the window
  HostCallAttrs(Int64Span groups, int64_t group_size, int64_t site, int64_t chunk_bytes)
      : call{groups, group_size, chunk_bytes}, site(site) {}
};

}  // namespace jax_symm

// XLA decodes the attributes dictionary into the struct, by name.
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    ::jax_symm::HostCallAttrs,
    ::xla::ffi::StructMember<::jax_symm::Int64Span>("groups"),
    ::xla::ffi::StructMember<int64_t>("group_size"),
    ::xla::ffi::StructMember<int64_t>("site"),
    ::xla::ffi::StructMember<int64_t>("chunk_bytes"));

namespace jax_symm {
namespace {

// The window checks the data against the slot lowering sized it with.
Error HostCollective(CollectiveKind kind, int64_t run_id, int32_t ordinal, const AnyBuffer& in,
                     AnyBuffer& out, const HostCallAttrs& attrs) {
  ErrorOr<CallSite> site = ResolveCall(Platform::kHost, ordinal, kind, attrs.call, in, out);
  if (site.has_error()) return site.error();
  const CallLayout& layout = site->layout;
  if (layout.world == 1) {  // nothing to exchange
    std::memcpy(out.untyped_data(), in.untyped_data(), in.size_bytes());
    return Error::Success();
  }
  ErrorOr<HostWindow*> window = HostWindow::Find(attrs.site, site->group.members);
  if (window.has_error()) return window.error();
  switch (kind) {
    case CollectiveKind::kAllGather:
      return (*window)->AllGather(layout, run_id, in.untyped_data(), out.untyped_data());
    case CollectiveKind::kReduceScatter:
      return (*window)->ReduceScatter(layout, run_id, in.element_type(), in.untyped_data(),
                                      out.untyped_data());
    case CollectiveKind::kAllReduce:
      return (*window)->AllReduce(layout, run_id, in.element_type(), in.untyped_data(),
                                  out.untyped_data());
  }
  return Internal("unknown collective kind");
}

template <CollectiveKind kKind>
Error HostHandler(ffi::RunId run, int32_t ordinal, ffi::Token, AnyBuffer in,
                  ffi::Result<ffi::Token>, ffi::Result<AnyBuffer> out, HostCallAttrs attrs) {
  return HostCollective(kKind, run.run_id, ordinal, in, *out, attrs);
}

}  // namespace

// One per custom call of a compiled executable (XLA makes it at the
// instantiate stage and destroys it with the executable): holds the call
// site's windows, so that they live exactly as long as some executable that
// uses them.
struct HostCallState {
  static ffi::TypeId id;
  std::vector<std::pair<int64_t, std::vector<int64_t>>> windows;
  ~HostCallState() {
    for (const auto& [site, members] : windows) HostWindow::Release(site, members);
  }
};
ffi::TypeId HostCallState::id = {};
ffi::TypeInfo host_call_state_info = ffi::MakeTypeInfo<HostCallState>();

namespace {

ffi::ErrorOr<std::unique_ptr<HostCallState>> HostInstantiate(HostCallAttrs attrs) {
  auto state = std::make_unique<HostCallState>();
  const int64_t size = attrs.call.group_size;
  if (size < 2) return state;  // groups of one have no window
  const auto& groups = attrs.call.groups;
  for (size_t at = 0; at + size <= groups.size(); at += size) {
    std::vector<int64_t> members(groups.begin() + at, groups.begin() + at + size);
    // Groups without a device of this process have no window here.
    if (HostWindow::Acquire(attrs.site, members)) {
      state->windows.emplace_back(attrs.site, std::move(members));
    }
  }
  return state;
}

auto BindHostCall() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::RunId>()
      .Ctx<ffi::DeviceOrdinal>()
      .Arg<ffi::Token>()  // orders this call after the device's previous one
      .Arg<AnyBuffer>()
      .Ret<ffi::Token>()
      .Ret<AnyBuffer>()
      .Attrs<HostCallAttrs>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HostCallInstantiate, HostInstantiate,
                              ffi::Ffi::BindInstantiate().Attrs<HostCallAttrs>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(HostAllGather, HostHandler<CollectiveKind::kAllGather>,
                              BindHostCall());
XLA_FFI_DEFINE_HANDLER_SYMBOL(HostReduceScatter, HostHandler<CollectiveKind::kReduceScatter>,
                              BindHostCall());
XLA_FFI_DEFINE_HANDLER_SYMBOL(HostAllReduce, HostHandler<CollectiveKind::kAllReduce>,
                              BindHostCall());

XLA_FFI_TypeId* HostCallStateTypeId() { return &HostCallState::id; }
const XLA_FFI_TypeInfo* HostCallStateTypeInfo() { return &host_call_state_info; }

}  // namespace jax_symm
