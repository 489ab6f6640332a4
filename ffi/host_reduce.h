// Element-wise sums over the ranks' slots for the host transport.
//
// Floating types accumulate in at least float32 and round once, in rank order
// (float16 and bfloat16 too, as NCCL's symmetric kernels do: a sum whose
// partial sums overflow float16 but whose total fits stays finite, where
// XLA:CPU, summing in float16, gives inf or nan);
// integers wrap around as XLA's do (two's complement), so signed types are
// summed as their unsigned twins to stay clear of undefined overflow.
#pragma once

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {
namespace host_reduce {

inline float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
    bits = sign | ((112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToHalf(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  }
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow
  if (absx < 0x38800000u) {  // subnormal or zero in half
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t man = (absx & 0x7fffffu) | 0x800000u;
    int shift = 126 - static_cast<int>(absx >> 23);  // 14..24
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = ((absx - 0x38000000u) >> 13);
  uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) ++half;
  return static_cast<uint16_t>(sign | half);
}

inline float Bf16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToBf16(float f) {  // round to nearest even, nan stays nan
  uint32_t x;
  std::memcpy(&x, &f, 4);
  // Branch-free (a select) so that the summing loop vectorises.
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1)) >> 16;
  const uint32_t quiet_nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// dsts[d][i] = sum over s of srcs[s][i] for every destination d, i < count,
// in the given element type (host_reduce.cc). One pass over the sources
// writes every destination, so an all-reduce can hand each rank its share of
// the sum without reading it back. InvalidArgument for a type with no sum
// (the Python layer rejects those at trace time; this is the last line of
// defence).
Error Sum(ffi::DataType dtype, const std::vector<char*>& dsts,
          const std::vector<const char*>& srcs, size_t count);

// The numpy names of the element types Sum accepts, in one list with the
// kernels (host_reduce.cc); Python's dtype checks derive from it.
std::vector<std::string> SummableTypeNames();

inline Error Sum(ffi::DataType dtype, void* dst, const std::vector<const char*>& srcs,
                 size_t count) {
  return Sum(dtype, std::vector<char*>{static_cast<char*>(dst)}, srcs, count);
}

}  // namespace host_reduce
}  // namespace jax_symm
