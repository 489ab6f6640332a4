// The one list of element types NCCL sums for jax_symm: the handlers
// (nccl_collectives.cc), the raw-NCCL timer (nccl_timer.cc) and Python's dtype
// checks (exported by module.cc) all derive from it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "ffi_common.h"
#include "nccl_api.h"

namespace jax_symm {

struct NcclSumTypeEntry {
  ffi::DataType dtype;
  const char* name;     // numpy's name
  int nccl_type;        // ncclDataType_t
  size_t nccl_bytes;    // bytes of one NCCL element (complex: one real part)
  size_t lanes;         // NCCL elements per value: 2 for complex (re, im), else 1
};

// NCCL has no 16-bit integer type: those sums stay with XLA on GPU.
inline constexpr NcclSumTypeEntry kNcclSumTypes[] = {
    {ffi::DataType::F16, "float16", kNcclFloat16, 2, 1},
    {ffi::DataType::BF16, "bfloat16", kNcclBfloat16, 2, 1},
    {ffi::DataType::F32, "float32", kNcclFloat32, 4, 1},
    {ffi::DataType::F64, "float64", kNcclFloat64, 8, 1},
    {ffi::DataType::C64, "complex64", kNcclFloat32, 4, 2},
    {ffi::DataType::C128, "complex128", kNcclFloat64, 8, 2},
    {ffi::DataType::S8, "int8", kNcclInt8, 1, 1},
    {ffi::DataType::U8, "uint8", kNcclUint8, 1, 1},
    {ffi::DataType::S32, "int32", kNcclInt32, 4, 1},
    {ffi::DataType::U32, "uint32", kNcclUint32, 4, 1},
    {ffi::DataType::S64, "int64", kNcclInt64, 8, 1},
    {ffi::DataType::U64, "uint64", kNcclUint64, 8, 1},
};

// (NCCL type, element count) of `bytes` of `dtype`, or an error if NCCL has no sum for it.
inline ErrorOr<std::pair<int, size_t>> NcclSumType(ffi::DataType dtype, size_t bytes) {
  for (const NcclSumTypeEntry& t : kNcclSumTypes) {
    if (t.dtype == dtype) return std::pair<int, size_t>(t.nccl_type, bytes / t.nccl_bytes);
  }
  return InvalidArgument("NCCL has no sum for element type " + DataTypeName(dtype));
}

inline std::vector<std::string> NcclSummableTypeNames() {
  std::vector<std::string> names;
  for (const NcclSumTypeEntry& t : kNcclSumTypes) names.push_back(t.name);
  return names;
}

}  // namespace jax_symm
