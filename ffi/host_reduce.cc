// The host sums' kernels (declared in host_reduce.h).
//
// Each element type gets one kernel, compiled twice on x86-64: for the
// baseline (SSE2, what a portable wheel may assume) and for AVX2, picked at
// load time by the CPU (GCC/Clang target_clones). Summing is element-wise, so
// the wider vectors change no result, only the speed: on the 2-core EPYC
// development VM, 8 sources of 16 Ki elements summed in L1/L2 went from 9.1 to
// 21.5 G elements/s in float32 and from 6.0 to 14.2 in bfloat16.
#include "host_reduce.h"

namespace jax_symm {
namespace host_reduce {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JAX_SYMM_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define JAX_SYMM_SIMD_CLONES
#endif

// Inlined into each clone, so that the clone's instruction set reaches the
// loops (and the conversion lambdas inside them).
#define JAX_SYMM_INLINE inline __attribute__((always_inline))

// Up to this many sources are added per pass over a block of accumulators.
// Measured on the 2-core VM (8 threads each summing 8 float32 sources of
// 1 MiB from DRAM): 3.0 ms with three sources per pass, 2.4 ms with all eight
// in one pass, which also never stores a partial sum.
constexpr size_t kSourcesPerPass = 8;

// acc[i] = (((acc[i] + p[0][i]) + p[1][i]) ...) + p[K-1][i], starting from +0
// on the first pass. The source loop has a constant trip count, so it unrolls
// and the element loop vectorises; the order of additions is rank order,
// element by element, whatever the vector width.
template <size_t K, bool kFirst, typename T, typename Acc, typename Load>
JAX_SYMM_INLINE void Accumulate(Acc* acc, const T* const* sources, size_t n, Load load) {
  const T* p[K];
  for (size_t k = 0; k < K; ++k) p[k] = sources[k];
  for (size_t i = 0; i < n; ++i) {
    // Starting from +0 (not from the first value) is what XLA's reductions
    // do: a sum of -0.0s is +0.0, as in lax.
    Acc v = kFirst ? Acc(0) : acc[i];
    for (size_t k = 0; k < K; ++k) v += load(p[k][i]);
    acc[i] = v;
  }
}

template <bool kFirst, typename T, typename Acc, typename Load>
JAX_SYMM_INLINE void AccumulateSome(size_t k, Acc* acc, const T* const* p, size_t n, Load load) {
  switch (k) {
    case 1: Accumulate<1, kFirst>(acc, p, n, load); break;
    case 2: Accumulate<2, kFirst>(acc, p, n, load); break;
    case 3: Accumulate<3, kFirst>(acc, p, n, load); break;
    case 4: Accumulate<4, kFirst>(acc, p, n, load); break;
    case 5: Accumulate<5, kFirst>(acc, p, n, load); break;
    case 6: Accumulate<6, kFirst>(acc, p, n, load); break;
    case 7: Accumulate<7, kFirst>(acc, p, n, load); break;
    default: Accumulate<8, kFirst>(acc, p, n, load); break;
  }
}
static_assert(kSourcesPerPass == 8, "AccumulateSome dispatches up to 8 sources");

// Works in blocks of accumulators that stay in L1, adding up to eight sources
// per pass over a block: a group of up to eight ranks is summed in one pass,
// with no partial sums stored. With several destinations each finished block
// is rounded once into `rounded` and copied to all of them while it is in L1.
template <typename T, typename Acc, typename Load, typename Store>
JAX_SYMM_INLINE void SumWith(const std::vector<char*>& dsts,
                             const std::vector<const char*>& srcs, size_t count, Load load,
                             Store store) {
  constexpr size_t kBlock = 1024;
  Acc acc[kBlock];
  T rounded[kBlock];
  const size_t world = srcs.size();
  std::vector<const T*> at(world);
  for (size_t start = 0; start < count; start += kBlock) {
    const size_t n = std::min(kBlock, count - start);
    for (size_t s = 0; s < world; ++s) at[s] = reinterpret_cast<const T*>(srcs[s]) + start;
    size_t s = std::min(world, kSourcesPerPass);
    AccumulateSome<true, T>(s, acc, at.data(), n, load);
    for (; s < world; s += kSourcesPerPass) {
      AccumulateSome<false, T>(std::min(kSourcesPerPass, world - s), acc, at.data() + s, n, load);
    }
    if (dsts.size() == 1) {
      T* out = reinterpret_cast<T*>(dsts[0]) + start;
      for (size_t i = 0; i < n; ++i) out[i] = store(acc[i]);
      continue;
    }
    for (size_t i = 0; i < n; ++i) rounded[i] = store(acc[i]);
    for (char* dst : dsts) std::memcpy(reinterpret_cast<T*>(dst) + start, rounded, n * sizeof(T));
  }
}

template <typename T>
JAX_SYMM_INLINE void SumPlain(const std::vector<char*>& dsts,
                              const std::vector<const char*>& srcs, size_t count) {
  SumWith<T, T>(dsts, srcs, count, [](T v) { return v; }, [](T v) { return v; });
}

// One clone pair per element type; lambdas, not function pointers, so that
// the conversions inline.
JAX_SYMM_SIMD_CLONES void SumF32(const std::vector<char*>& d, const std::vector<const char*>& s,
                                 size_t n) {
  SumPlain<float>(d, s, n);
}
JAX_SYMM_SIMD_CLONES void SumF64(const std::vector<char*>& d, const std::vector<const char*>& s,
                                 size_t n) {
  SumPlain<double>(d, s, n);
}
JAX_SYMM_SIMD_CLONES void SumBf16(const std::vector<char*>& d, const std::vector<const char*>& s,
                                  size_t n) {
  SumWith<uint16_t, float>(d, s, n, [](uint16_t v) { return Bf16ToFloat(v); },
                           [](float v) { return FloatToBf16(v); });
}
JAX_SYMM_SIMD_CLONES void SumF16(const std::vector<char*>& d, const std::vector<const char*>& s,
                                 size_t n) {
  SumWith<uint16_t, float>(d, s, n, [](uint16_t v) { return HalfToFloat(v); },
                           [](float v) { return FloatToHalf(v); });
}
template <typename T>
JAX_SYMM_SIMD_CLONES void SumInt(const std::vector<char*>& d, const std::vector<const char*>& s,
                                 size_t n) {
  SumPlain<T>(d, s, n);
}

using SumFn = void (*)(const std::vector<char*>&, const std::vector<const char*>&, size_t);

// The one list of host sums: element type, its numpy name (exported to
// Python, which refuses the others at trace time), and the kernel. Complex
// numbers sum as pairs of reals (`lanes` reals per element); signed and
// unsigned integers of a width share one kernel (two's complement wraps alike).
struct HostSumType {
  ffi::DataType dtype;
  const char* name;
  SumFn sum;
  size_t lanes;
};
const HostSumType kHostSumTypes[] = {
    {ffi::DataType::F16, "float16", SumF16, 1},
    {ffi::DataType::BF16, "bfloat16", SumBf16, 1},
    {ffi::DataType::F32, "float32", SumF32, 1},
    {ffi::DataType::F64, "float64", SumF64, 1},
    {ffi::DataType::C64, "complex64", SumF32, 2},
    {ffi::DataType::C128, "complex128", SumF64, 2},
    {ffi::DataType::S8, "int8", SumInt<uint8_t>, 1},
    {ffi::DataType::U8, "uint8", SumInt<uint8_t>, 1},
    {ffi::DataType::S16, "int16", SumInt<uint16_t>, 1},
    {ffi::DataType::U16, "uint16", SumInt<uint16_t>, 1},
    {ffi::DataType::S32, "int32", SumInt<uint32_t>, 1},
    {ffi::DataType::U32, "uint32", SumInt<uint32_t>, 1},
    {ffi::DataType::S64, "int64", SumInt<uint64_t>, 1},
    {ffi::DataType::U64, "uint64", SumInt<uint64_t>, 1},
};

}  // namespace

Error Sum(ffi::DataType dtype, const std::vector<char*>& dsts,
          const std::vector<const char*>& srcs, size_t count) {
  for (const HostSumType& t : kHostSumTypes) {
    if (t.dtype == dtype) {
      t.sum(dsts, srcs, t.lanes * count);
      return Error::Success();
    }
  }
  return InvalidArgument("no host sum for element type " + DataTypeName(dtype));
}

std::vector<std::string> SummableTypeNames() {
  std::vector<std::string> names;
  for (const HostSumType& t : kHostSumTypes) names.push_back(t.name);
  return names;
}

}  // namespace host_reduce
}  // namespace jax_symm
