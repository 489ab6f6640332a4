// One NCCL collective from a send to a receive buffer: the one place each
// kind's NCCL call is written (Enqueue<Name>, one per row of the table of
// kinds, ffi_kinds.h), for both NCCL paths (jax_symm's own arenas,
// nccl_collectives.cc; XLA's buffers and communicator,
// nccl_xla_collectives.cc) and the raw timer (nccl_timer.cc), all through
// EnqueueNcclCall. Where the buffers lie is the caller's business.
#pragma once

#include <cstddef>
#include <utility>

#include "ffi_common.h"
#include "ffi_kinds.h"
#include "nccl_api.h"
#include "nccl_types.h"

namespace jax_symm {

struct NcclCall {
  CollectiveKind kind;
  const void* send;
  void* recv;
  size_t count;  // NCCL elements per rank's chunk
  int type;      // ncclDataType_t
  int world;     // ranks of the communicator (the all-to-all's peers)
  size_t chunk_bytes;  // bytes of one rank's chunk (count NCCL elements)
};

// The NCCL call for `kind` on chunks of `chunk` bytes of `dtype` in a group
// of `world` ranks: a kind that does not sum (its row's `sums`: the
// all-gather, the all-to-all) moves bytes, whatever the dtype; the sums need
// an NCCL type for `dtype`.
inline ErrorOr<NcclCall> PlanNcclCall(CollectiveKind kind, ffi::DataType dtype,
                                      const void* send, void* recv, size_t chunk,
                                      int64_t world) {
  const int ranks = static_cast<int>(world);
  if (!KindSums(kind)) {
    return NcclCall{kind, send, recv, chunk, kNcclInt8, ranks, chunk};
  }
  ErrorOr<std::pair<int, size_t>> type = NcclSumType(dtype, chunk);
  if (type.has_error()) return type.error();
  return NcclCall{kind, send, recv, type->second, type->first, ranks, chunk};
}

inline const char* NcclCallName(CollectiveKind kind) {
  const KindRow* row = RowOf(kind);
  return row != nullptr ? row->nccl_call : "an NCCL collective";
}

inline ncclResult_t EnqueueAllGather(const NcclApi& api, const NcclCall& c, ncclComm_t comm,
                                     CUstream stream) {
  return api.ncclAllGather(c.send, c.recv, c.count, c.type, comm, stream);
}

inline ncclResult_t EnqueueReduceScatter(const NcclApi& api, const NcclCall& c,
                                         ncclComm_t comm, CUstream stream) {
  return api.ncclReduceScatter(c.send, c.recv, c.count, c.type, kNcclSum, comm, stream);
}

inline ncclResult_t EnqueueAllReduce(const NcclApi& api, const NcclCall& c, ncclComm_t comm,
                                     CUstream stream) {
  return api.ncclAllReduce(c.send, c.recv, c.count, c.type, kNcclSum, comm, stream);
}

// The all-to-all: NCCL's own where the loaded NCCL has it (2.28.3+,
// kAllToAllVersion), else one send and one receive per peer in a group,
// which NCCL runs as one operation. Chunk j of `send` goes to rank j; chunk
// i of `recv` comes from rank i. Never in place (NCCL refuses that).
inline ncclResult_t EnqueueAllToAll(const NcclApi& api, const NcclCall& c, ncclComm_t comm,
                                    CUstream stream) {
  if (api.ncclAlltoAll != nullptr && !AllToAllBySendRecv()) {
    return api.ncclAlltoAll(c.send, c.recv, c.count, c.type, comm, stream);
  }
  if (api.ncclSend == nullptr || api.ncclRecv == nullptr) return 5;  // ncclInvalidArgument
  const size_t bytes = c.chunk_bytes;
  const char* send = static_cast<const char*>(c.send);
  char* recv = static_cast<char*>(c.recv);
  ncclResult_t result = api.ncclGroupStart();
  if (result != kNcclSuccess) return result;
  for (int peer = 0; peer < c.world && result == kNcclSuccess; ++peer) {
    result = api.ncclSend(send + peer * bytes, c.count, c.type, peer, comm, stream);
    if (result == kNcclSuccess) {
      result = api.ncclRecv(recv + peer * bytes, c.count, c.type, peer, comm, stream);
    }
  }
  // The group is ended whatever happened inside it; the first error wins.
  const ncclResult_t end = api.ncclGroupEnd();
  return result != kNcclSuccess ? result : end;
}

// The call of `c.kind`: Enqueue<Name> of its row.
inline ncclResult_t EnqueueNcclCall(const NcclApi& api, const NcclCall& c, ncclComm_t comm,
                                    CUstream stream) {
  switch (c.kind) {
#define JAX_SYMM_ENQUEUE_CASE(Name, ...) \
  case CollectiveKind::k##Name:          \
    return Enqueue##Name(api, c, comm, stream);
    JAX_SYMM_COLLECTIVE_KINDS(JAX_SYMM_ENQUEUE_CASE)
#undef JAX_SYMM_ENQUEUE_CASE
  }
  return 5;  // ncclInvalidArgument
}

}  // namespace jax_symm
