// XLA's FFI collectives extension (extension type 129): XLA's own NCCL
// communicator and windows on buffers XLA placed, for handlers that run on
// XLA's communicators (the NCCL transport's XLA path, nccl_xla_collectives.cc).
//
// Why declared here rather than included: jax_symm builds against the oldest
// admitted jaxlib's FFI headers (FFI API 0.3), which predate the extension, so
// that one build serves every admitted jaxlib. The extension is a C ABI
// versioned by struct_size and by its id's major/minor version; these are the
// fields jax_symm reads, in the ABI's order. tests/lowering/test_xla_collectives_abi.py
// compiles them against the running jaxlib's own header, where it ships one,
// and checks every offset and size.
//
// How a handler reaches it: XLA_FFI_Api::XLA_FFI_InvokeContext_FindExtension,
// a field FFI API 0.4 appended right after XLA_FFI_DeviceOrdinal_Get (the last
// field of API 0.3). It is read only when the running API's struct_size says
// it is there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {
namespace xla_abi {

constexpr int64_t kCollectivesExtensionType = 129;
// The first version with windows (request_window / get_window), and the one
// whose get_communicator also returns the rank and size.
constexpr int32_t kWindowsMinor = 2;
constexpr int32_t kRankInfoMinor = 3;

constexpr int32_t kGroupFlattenedId = 3;  // XLA_FFI_GROUP_FLATTENED_ID

struct ExtensionId {
  int64_t extension_type;
  int32_t major_version;
  int32_t minor_version;
};

struct ExtensionBase {  // XLA_FFI_Extension
  size_t struct_size;
  ExtensionId id;
  const ExtensionBase* next;
};

struct ReplicaGroup {  // XLA_FFI_ReplicaGroup
  const int64_t* ids;
  size_t size;
};

struct CommunicatorRequestArgs {  // XLA_FFI_Communicator_Request_Args
  size_t struct_size;
  void* extension_start;
  int32_t group_mode;  // a C enum: int-sized
  const ReplicaGroup* groups;
  size_t num_groups;
  int64_t communication_id;
};

struct CommunicatorGetArgs {  // XLA_FFI_Communicator_Get_Args
  size_t struct_size;
  void* extension_start;
  int32_t group_mode;
  const ReplicaGroup* groups;
  size_t num_groups;
  int64_t communication_id;
  void* communicator;  // out: ncclComm_t on XLA:GPU
  int32_t rank;        // out, from minor 3
  int32_t size;        // out, from minor 3
};

struct MemoryRegion {  // XLA_FFI_CollectiveMemoryRegion
  const void* buffer;
  size_t byte_size;
  uint64_t flags;
};

struct WindowRequestArgs {  // XLA_FFI_Window_Request_Args
  size_t struct_size;
  void* extension_start;
  int32_t group_mode;
  const ReplicaGroup* groups;
  size_t num_groups;
  int64_t communication_id;
  const MemoryRegion* regions;
  size_t num_regions;
};

struct WindowGetArgs {  // XLA_FFI_Window_Get_Args
  size_t struct_size;
  void* extension_start;
  int32_t group_mode;
  const ReplicaGroup* groups;
  size_t num_groups;
  int64_t communication_id;
  const void* buffer;
  void* window;  // out: ncclWindow_t on XLA:GPU
  size_t window_offset;
};

struct CollectivesExtension;
using Callback = XLA_FFI_Error* (*)(const CollectivesExtension*, void*);

struct CollectivesExtension {  // XLA_FFI_Collectives_Extension
  ExtensionBase extension_base;
  void* state;
  Callback request_communicator;
  Callback get_communicator;
  Callback request_window;  // from minor 2
  Callback get_window;      // from minor 2
};

struct FindExtensionArgs {  // XLA_FFI_InvokeContext_FindExtension_Args
  size_t struct_size;
  void* extension_start;
  XLA_FFI_ExecutionContext* ctx;
  int64_t extension_type;
  const ExtensionBase* extension;  // out
};

using FindExtensionFn = XLA_FFI_Error* (*)(FindExtensionArgs*);

}  // namespace xla_abi

// The extension as one call sees it, decoded from its context (.Ctx<>).
// `ext` is null when the running XLA attaches none (older jaxlib, or a stage
// without it); the handler turns that into an error naming what is missing.
class XlaCollectives {
 public:
  XlaCollectives(const XLA_FFI_Api* api, const xla_abi::CollectivesExtension* ext,
                 std::string why_absent)
      : api_(api), ext_(ext), why_absent_(std::move(why_absent)) {}

  // Finds the extension on `ctx`; never fails (see `ext`).
  static XlaCollectives Find(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx);

  // An error unless the extension is here with windows.
  Error CheckWindows() const;
  int32_t minor_version() const { return ext_ ? ext_->extension_base.id.minor_version : -1; }

  // The calls, each for the replica groups `groups` (flattened global device
  // ids, `group_size` per group: jax_symm's own attribute) in XLA's
  // flattened-id mode, on XLA's clique `communication_id`.
  Error RequestCommunicator(Int64Span groups, int64_t group_size, int64_t communication_id) const;
  Error RequestWindows(Int64Span groups, int64_t group_size, int64_t communication_id,
                       const std::vector<xla_abi::MemoryRegion>& regions) const;
  struct Communicator {
    void* comm;
    int32_t rank;  // -1 where the extension does not say (minor < 3)
    int32_t size;
  };
  ErrorOr<Communicator> GetCommunicator(Int64Span groups, int64_t group_size,
                                        int64_t communication_id) const;

 private:
  // XLA's error, as ffi::Error with its message (the XLA_FFI_Error is freed).
  Error Take(XLA_FFI_Error* err, const char* what) const;

  const XLA_FFI_Api* api_;
  const xla_abi::CollectivesExtension* ext_;
  std::string why_absent_;
};

}  // namespace jax_symm

namespace xla::ffi {
template <>
struct CtxDecoding<::jax_symm::XlaCollectives> {
  using Type = ::jax_symm::XlaCollectives;
  static std::optional<Type> Decode(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx,
                                    DiagnosticEngine&) {
    return ::jax_symm::XlaCollectives::Find(api, ctx);
  }
};
}  // namespace xla::ffi
