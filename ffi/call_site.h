// Decoding shared by every handler: which group and rank this device serves
// in a call, and the layout of the data it moves, checked against the buffers
// XLA handed over.
#pragma once

#include "device_table.h"
#include "ffi_common.h"

namespace jax_symm {

struct CallSite {
  GroupRef group;
  CallLayout layout;
};

// `in_chunks`/`out_chunks`: how many [outer][inner] chunks the input and the
// output hold (1 or world), so a shape mismatch between lowering and the
// buffers is an error rather than an overrun.
inline ErrorOr<CallSite> ResolveCallSite(Platform platform, int32_t ordinal, Int64Span groups,
                                         int64_t group_size, int64_t outer,
                                         int64_t inner_bytes, bool in_is_world,
                                         bool out_is_world, const AnyBuffer& in,
                                         const AnyBuffer& out) {
  ErrorOr<int64_t> global_id = GlobalIdOfOrdinal(platform, ordinal);
  if (global_id.has_error()) return global_id.error();
  ErrorOr<GroupRef> group = FindGroup(groups, group_size, *global_id);
  if (group.has_error()) return group.error();
  CallSite site;
  site.group = std::move(*group);
  site.layout.outer = outer;
  site.layout.inner_bytes = inner_bytes;
  site.layout.world = group_size;
  site.layout.rank = site.group.rank;
  const size_t chunk = site.layout.chunk_bytes();
  const size_t want_in = in_is_world ? chunk * group_size : chunk;
  const size_t want_out = out_is_world ? chunk * group_size : chunk;
  if (in.size_bytes() != want_in || out.size_bytes() != want_out) {
    return Internal("buffer sizes (" + std::to_string(in.size_bytes()) + " -> " +
                    std::to_string(out.size_bytes()) + " bytes) do not match the "
                    "lowered layout (" + std::to_string(want_in) + " -> " +
                    std::to_string(want_out) + ")");
  }
  return site;
}

}  // namespace jax_symm
