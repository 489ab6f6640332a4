// The one table of collective kinds. Each row makes, for its kind:
//   - CollectiveKind::k<Name>, its number (the row's position);
//   - its name, the one Python and the FFI targets use ("all_gather");
//   - its layout (LayoutOf): one chunk, or one per rank, read and written;
//   - whether it sums (so needs a sum for its element type);
//   - the NCCL call that serves it, for messages.
// The transports expand the same rows into their handler symbols
// (host_collectives.h: Host<Name>; nccl_collectives.h: Nccl<Name>;
// nccl_xla_collectives.h: NcclXla<Name>, NcclXla<Name>Prepare,
// NcclXla<Name>Captured), module.cc into the FFI targets it exports, and
// nccl_enqueue.h into the dispatch to each kind's NCCL call, Enqueue<Name>.
//
// So a new kind is a row here plus what only it can say: Enqueue<Name>
// (nccl_enqueue.h), its host exchange (HostWindow::<Name>, the case in
// HostCall::Exchange) and where the own path and the raw timer place its
// buffers in the arena (nccl_collectives.cc, nccl_timer.cc). A missing
// function fails to compile, and so does a missing case (-Werror=switch).
// Python's own table (jax_symm/_kinds.py) is compared with this one at
// import: names, layouts and sums.
//
// Rows are appended, never reordered: a kind's number is part of a host
// window's identity, written in its shared header (host_window.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ffi_common.h"

namespace jax_symm {

//   X(Name, "name", chunks in, chunks out, sums, "NCCL call")
// (the all-to-all: chunk j of the input goes to rank j, chunk i of the
// output came from rank i)
#define JAX_SYMM_COLLECTIVE_KINDS(X)                                           \
  X(AllGather, "all_gather", kOne, kWorld, false, "ncclAllGather")             \
  X(ReduceScatter, "reduce_scatter", kWorld, kOne, true, "ncclReduceScatter")  \
  X(AllReduce, "all_reduce", kOne, kOne, true, "ncclAllReduce")                \
  X(AllToAll, "all_to_all", kWorld, kWorld, false,                             \
    "ncclAlltoAll (or grouped ncclSend/ncclRecv)")

// The kinds of collective a window serves; part of the window's identity so
// that an all-gather and a reduce-scatter never share a buffer by accident.
enum class CollectiveKind : int64_t {
#define JAX_SYMM_KIND_ENUMERATOR(Name, ...) k##Name,
  JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_KIND_ENUMERATOR)
#undef JAX_SYMM_KIND_ENUMERATOR
};

// How many chunks each kind reads and writes per rank: one, or one per rank
// of the group. The handlers check buffers against it (ffi_call.h).
enum class Chunks { kOne, kWorld };
struct KindLayout {
  Chunks in;
  Chunks out;
};

struct KindRow {
  CollectiveKind kind;
  const char* name;
  KindLayout layout;
  bool sums;
  const char* nccl_call;
};

inline constexpr KindRow kKindRows[] = {
#define JAX_SYMM_KIND_ROW(Name, name, in, out, sums, nccl_call) \
  {CollectiveKind::k##Name, name, {Chunks::in, Chunks::out}, sums, nccl_call},
    JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_KIND_ROW)
#undef JAX_SYMM_KIND_ROW
};
inline constexpr size_t kNumKinds = sizeof(kKindRows) / sizeof(kKindRows[0]);

// Row i is kind i, so a kind finds its row by its number.
constexpr bool KindRowsInOrder() {
  for (size_t i = 0; i < kNumKinds; ++i) {
    if (static_cast<size_t>(kKindRows[i].kind) != i) return false;
  }
  return true;
}
static_assert(KindRowsInOrder(), "kKindRows must list the kinds in their enum's order");

// The row of `kind`, or nullptr for a number that is no kind.
inline const KindRow* RowOf(CollectiveKind kind) {
  const auto i = static_cast<size_t>(kind);
  return i < kNumKinds ? &kKindRows[i] : nullptr;
}

inline const char* CollectiveKindName(CollectiveKind kind) {
  const KindRow* row = RowOf(kind);
  return row != nullptr ? row->name : "?";
}

inline KindLayout LayoutOf(CollectiveKind kind) {
  const KindRow* row = RowOf(kind);
  return row != nullptr ? row->layout : KindLayout{Chunks::kOne, Chunks::kOne};
}

inline bool KindSums(CollectiveKind kind) {
  const KindRow* row = RowOf(kind);
  return row != nullptr && row->sums;
}

inline const char* ChunksName(Chunks chunks) {
  return chunks == Chunks::kWorld ? "world" : "one";
}

// The kinds' names, for messages: "all_gather, reduce_scatter, ...".
inline std::string CollectiveKindNames() {
  std::string names;
  for (const KindRow& row : kKindRows) {
    names += (names.empty() ? "" : ", ") + std::string(row.name);
  }
  return names;
}

inline ErrorOr<CollectiveKind> CollectiveKindByName(const std::string& name) {
  for (const KindRow& row : kKindRows) {
    if (name == row.name) return row.kind;
  }
  return InvalidArgument("unknown collective '" + name + "' (" + CollectiveKindNames() + ")");
}

}  // namespace jax_symm
