// XLA's FFI collectives extension, reached at run time (xla_collectives.h).
#include "xla_collectives.h"

#include <cstddef>
#include <cstring>
#include <string>
#include <utility>

namespace jax_symm {
namespace {

// Where FFI API 0.4 put XLA_FFI_InvokeContext_FindExtension: the field after
// the last one of API 0.3, the API these headers declare.
constexpr size_t kFindExtensionOffset =
    offsetof(XLA_FFI_Api, XLA_FFI_DeviceOrdinal_Get) + sizeof(void*);
constexpr int kFindExtensionMinorApi = 4;

xla_abi::FindExtensionFn FindExtensionEntry(const XLA_FFI_Api* api) {
  if (api == nullptr || api->api_version.major_version != 0 ||
      api->api_version.minor_version < kFindExtensionMinorApi ||
      api->struct_size < kFindExtensionOffset + sizeof(void*)) {
    return nullptr;
  }
  xla_abi::FindExtensionFn fn;
  const char* base = reinterpret_cast<const char*>(api);
  std::memcpy(&fn, base + kFindExtensionOffset, sizeof(fn));
  return fn;
}

std::string ApiVersion(const XLA_FFI_Api* api) {
  return std::to_string(api->api_version.major_version) + "." +
         std::to_string(api->api_version.minor_version);
}

// The groups of a call as XLA's replica groups (views into `groups`).
std::vector<xla_abi::ReplicaGroup> RawGroups(Int64Span groups, int64_t group_size) {
  std::vector<xla_abi::ReplicaGroup> out;
  const size_t n = group_size > 0 ? groups.size() / static_cast<size_t>(group_size) : 0;
  for (size_t g = 0; g < n; ++g) {
    out.push_back({groups.begin() + g * group_size, static_cast<size_t>(group_size)});
  }
  return out;
}

template <typename Args>
void FillGroups(Args& args, const std::vector<xla_abi::ReplicaGroup>& raw,
                int64_t communication_id) {
  args.struct_size = sizeof(Args);
  args.extension_start = nullptr;
  args.group_mode = xla_abi::kGroupFlattenedId;
  args.groups = raw.data();
  args.num_groups = raw.size();
  args.communication_id = communication_id;
}

}  // namespace

XlaCollectives XlaCollectives::Find(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx) {
  xla_abi::FindExtensionFn find = FindExtensionEntry(api);
  if (find == nullptr) {
    return XlaCollectives(api, nullptr,
                          "the running XLA's FFI API (" + ApiVersion(api) +
                              ") has no extensions (they need 0.4, jaxlib >= 0.11)");
  }
  xla_abi::FindExtensionArgs args{};
  args.struct_size = sizeof(args);
  args.ctx = ctx;
  args.extension_type = xla_abi::kCollectivesExtensionType;
  if (XLA_FFI_Error* err = find(&args)) {
    XLA_FFI_Error_Destroy_Args destroy{};
    destroy.struct_size = XLA_FFI_Error_Destroy_Args_STRUCT_SIZE;
    destroy.error = err;
    api->XLA_FFI_Error_Destroy(&destroy);
    return XlaCollectives(api, nullptr, "XLA attached no collectives extension to this call");
  }
  const auto* ext = reinterpret_cast<const xla_abi::CollectivesExtension*>(args.extension);
  if (ext == nullptr || ext->extension_base.id.major_version != 0) {
    return XlaCollectives(api, nullptr,
                          ext ? "XLA's collectives extension has major version " +
                                    std::to_string(ext->extension_base.id.major_version) +
                                    " (jax_symm knows 0)"
                              : "XLA attached no collectives extension to this call");
  }
  return XlaCollectives(api, ext, "");
}

Error XlaCollectives::CheckWindows() const {
  if (ext_ == nullptr) return Internal("XLA's collectives are not available: " + why_absent_);
  const size_t need = offsetof(xla_abi::CollectivesExtension, get_window) + sizeof(void*);
  if (ext_->extension_base.id.minor_version < xla_abi::kWindowsMinor ||
      ext_->extension_base.struct_size < need || ext_->request_window == nullptr ||
      ext_->get_window == nullptr) {
    return Internal("XLA's collectives extension 0." + std::to_string(minor_version()) +
                    " has no windows (they need 0." + std::to_string(xla_abi::kWindowsMinor) +
                    ", jaxlib >= 0.12.1); use the own-communicator path "
                    "(JAX_SYMM_NCCL_PATH=own)");
  }
  return Error::Success();
}

Error XlaCollectives::Take(XLA_FFI_Error* err, const char* what) const {
  XLA_FFI_Error_GetMessage_Args get{};
  get.struct_size = XLA_FFI_Error_GetMessage_Args_STRUCT_SIZE;
  get.error = err;
  api_->XLA_FFI_Error_GetMessage(&get);
  std::string message = get.message ? get.message : "(no message)";
  XLA_FFI_Error_Destroy_Args destroy{};
  destroy.struct_size = XLA_FFI_Error_Destroy_Args_STRUCT_SIZE;
  destroy.error = err;
  api_->XLA_FFI_Error_Destroy(&destroy);
  return Internal(std::string(what) + " (XLA's collectives extension) failed: " + message);
}

Error XlaCollectives::RequestCommunicator(Int64Span groups, int64_t group_size,
                                          int64_t communication_id) const {
  JAX_SYMM_RETURN_IF_ERROR(CheckWindows());
  std::vector<xla_abi::ReplicaGroup> raw = RawGroups(groups, group_size);
  xla_abi::CommunicatorRequestArgs args{};
  FillGroups(args, raw, communication_id);
  if (XLA_FFI_Error* err = ext_->request_communicator(ext_, &args)) {
    return Take(err, "request_communicator");
  }
  return Error::Success();
}

Error XlaCollectives::RequestWindows(Int64Span groups, int64_t group_size,
                                     int64_t communication_id,
                                     const std::vector<xla_abi::MemoryRegion>& regions) const {
  JAX_SYMM_RETURN_IF_ERROR(CheckWindows());
  if (regions.empty()) return Error::Success();
  std::vector<xla_abi::ReplicaGroup> raw = RawGroups(groups, group_size);
  xla_abi::WindowRequestArgs args{};
  FillGroups(args, raw, communication_id);
  args.regions = regions.data();
  args.num_regions = regions.size();
  if (XLA_FFI_Error* err = ext_->request_window(ext_, &args)) {
    return Take(err, "request_window");
  }
  return Error::Success();
}

ErrorOr<XlaCollectives::Communicator> XlaCollectives::GetCommunicator(
    Int64Span groups, int64_t group_size, int64_t communication_id) const {
  JAX_SYMM_RETURN_IF_ERROR(CheckWindows());
  std::vector<xla_abi::ReplicaGroup> raw = RawGroups(groups, group_size);
  xla_abi::CommunicatorGetArgs args{};
  FillGroups(args, raw, communication_id);
  // Before minor 3 the struct ends at `communicator`: say so, and XLA writes
  // no rank or size.
  if (minor_version() < xla_abi::kRankInfoMinor) {
    args.struct_size = offsetof(xla_abi::CommunicatorGetArgs, communicator) + sizeof(void*);
  }
  args.rank = -1;
  args.size = -1;
  if (XLA_FFI_Error* err = ext_->get_communicator(ext_, &args)) {
    return Take(err, "get_communicator");
  }
  if (args.communicator == nullptr) {
    return Internal("XLA's collectives extension returned no communicator");
  }
  return Communicator{args.communicator, args.rank, args.size};
}

}  // namespace jax_symm
