// One NCCL collective from a send to a receive buffer: the one place each
// kind's NCCL call is written, for both NCCL paths (jax_symm's own arenas,
// nccl_collectives.cc; XLA's buffers and communicator,
// nccl_xla_collectives.cc). Where the buffers lie is the caller's business.
#pragma once

#include <cstddef>
#include <utility>

#include "ffi_common.h"
#include "nccl_api.h"
#include "nccl_types.h"

namespace jax_symm {

struct NcclCall {
  CollectiveKind kind;
  const void* send;
  void* recv;
  size_t count;  // NCCL elements per rank's chunk
  int type;      // ncclDataType_t
};

// The NCCL call for `kind` on chunks of `chunk` bytes of `dtype`: all-gather
// moves bytes (any dtype); the sums need an NCCL type for `dtype`.
inline ErrorOr<NcclCall> PlanNcclCall(CollectiveKind kind, ffi::DataType dtype,
                                      const void* send, void* recv, size_t chunk) {
  if (kind == CollectiveKind::kAllGather) {
    return NcclCall{kind, send, recv, chunk, kNcclInt8};
  }
  ErrorOr<std::pair<int, size_t>> type = NcclSumType(dtype, chunk);
  if (type.has_error()) return type.error();
  return NcclCall{kind, send, recv, type->second, type->first};
}

inline const char* NcclCallName(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllGather: return "ncclAllGather";
    case CollectiveKind::kReduceScatter: return "ncclReduceScatter";
    case CollectiveKind::kAllReduce: return "ncclAllReduce";
  }
  return "an NCCL collective";
}

inline ncclResult_t EnqueueNcclCall(const NcclApi& api, const NcclCall& c, ncclComm_t comm,
                                    CUstream stream) {
  switch (c.kind) {
    case CollectiveKind::kAllGather:
      return api.ncclAllGather(c.send, c.recv, c.count, c.type, comm, stream);
    case CollectiveKind::kReduceScatter:
      return api.ncclReduceScatter(c.send, c.recv, c.count, c.type, kNcclSum, comm, stream);
    case CollectiveKind::kAllReduce:
      return api.ncclAllReduce(c.send, c.recv, c.count, c.type, kNcclSum, comm, stream);
  }
  return 5;  // ncclInvalidArgument
}

}  // namespace jax_symm
