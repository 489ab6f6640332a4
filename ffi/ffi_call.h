// What every handler does first: its attributes, decoded once into a struct
// by XLA's FFI binding, then this device's group and rank in the call and
// the call's data layout, checked against the buffers XLA handed over.
#pragma once

#include <string>
#include <utility>

#include "ffi_common.h"
#include "ffi_devices.h"
#include "ffi_kinds.h"

namespace jax_symm {

// The attributes every collective call carries (jax_symm/_host.py and
// jax_symm/_nccl.py emit them; names and types are the contract).
struct CallAttrs {
  Int64Span groups;     // replica groups as global device ids, flattened
  int64_t group_size;   // ranks per group
  int64_t chunk_bytes;  // bytes per rank and chunk (see CallLayout)
};

struct CallSite {
  GroupRef group;
  CallLayout layout;
};

// Finds this device's group and rank and checks the buffers against the
// layout: each kind reads and writes whole chunks, one chunk or
// one per rank (CallLayout), so a mismatch between lowering and the buffers
// is an error rather than an overrun. How much window or arena memory a call
// needs is not computed here: lowering sized it, and the transports compare
// these buffers' own sizes with what it prepared.
inline ErrorOr<CallSite> ResolveCall(Platform platform, int32_t ordinal, CollectiveKind kind,
                                     const CallAttrs& attrs, const AnyBuffer& in,
                                     const AnyBuffer& out) {
  ErrorOr<int64_t> global_id = GlobalIdOfOrdinal(platform, ordinal);
  if (global_id.has_error()) return global_id.error();
  ErrorOr<GroupRef> group = FindGroup(attrs.groups, attrs.group_size, *global_id);
  if (group.has_error()) return group.error();
  CallSite site;
  site.group = std::move(*group);
  site.layout.chunk = attrs.chunk_bytes;
  site.layout.world = attrs.group_size;
  site.layout.rank = site.group.rank;
  const size_t chunk = site.layout.chunk_bytes();
  const size_t world = static_cast<size_t>(attrs.group_size);
  const KindLayout layout = LayoutOf(kind);
  const size_t want_in = layout.in == Chunks::kWorld ? chunk * world : chunk;
  const size_t want_out = layout.out == Chunks::kWorld ? chunk * world : chunk;
  if (in.size_bytes() != want_in || out.size_bytes() != want_out) {
    return Internal("buffer sizes (" + std::to_string(in.size_bytes()) + " -> " +
                    std::to_string(out.size_bytes()) + " bytes) do not match the "
                    "lowered layout (" + std::to_string(want_in) + " -> " +
                    std::to_string(want_out) + ")");
  }
  return site;
}

}  // namespace jax_symm
