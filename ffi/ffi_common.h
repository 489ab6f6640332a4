// What every transport shares: FFI aliases, error helpers, the decoded shape of
// one collective call, and the lookup of a device's rank in its group.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jax_symm {

namespace ffi = xla::ffi;
using ffi::AnyBuffer;
using ffi::Error;
using ffi::ErrorCode;
// ffi::ErrorOr that also converts from a plain Error, so helpers can
// `return InvalidArgument(...)` whatever they return.
template <typename T>
class ErrorOr : public ffi::ErrorOr<T> {
 public:
  using ffi::ErrorOr<T>::ErrorOr;
  ErrorOr(Error error)  // NOLINT
      : ffi::ErrorOr<T>(ffi::Unexpected<Error>(std::move(error))) {}
};
using Int64Span = ffi::Span<const int64_t>;

inline Error Internal(std::string msg) {
  return Error(ErrorCode::kInternal, "jax_symm: " + std::move(msg));
}
inline Error InvalidArgument(std::string msg) {
  return Error(ErrorCode::kInvalidArgument, "jax_symm: " + std::move(msg));
}
inline Error DeadlineExceeded(std::string msg) {
  return Error(ErrorCode::kDeadlineExceeded, "jax_symm: " + std::move(msg));
}

// The longest wait any setting may ask for (about 31 years): longer is as
// good as none, and keeps now() + wait far from overflowing a time point.
inline constexpr double kMaxWaitSeconds = 1e9;

// A wait given in seconds, as a steady_clock duration that is safe to add to
// now(): nan and negatives are no wait, and anything above kMaxWaitSeconds
// (inf included) is kMaxWaitSeconds. Converting an inf or nan double
// duration to the clock's integer ticks is undefined behaviour.
inline std::chrono::steady_clock::duration WaitFor(double seconds) {
  if (!(seconds > 0)) return std::chrono::steady_clock::duration::zero();
  if (seconds > kMaxWaitSeconds) seconds = kMaxWaitSeconds;
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(seconds));
}

// A setting in seconds checked where it enters C++: finite and in [low,
// kMaxWaitSeconds] (or (low, ...] with `low_open`); the error names it.
inline Error CheckSeconds(const char* name, double value, double low, bool low_open) {
  const bool ok = std::isfinite(value) && (low_open ? value > low : value >= low) &&
                  value <= kMaxWaitSeconds;
  if (ok) return Error::Success();
  return Error(ErrorCode::kInvalidArgument,
               std::string("jax_symm: ") + name + " = " + std::to_string(value) +
                   " is out of range: it must be a finite number of seconds in " +
                   (low_open ? "(" : "[") + std::to_string(low) + ", " +
                   std::to_string(kMaxWaitSeconds) + "]");
}

// The name of an XLA element type in messages: numpy's (ml_dtypes' for the
// narrow floats and integers), "bfloat16" rather than its enum number; a
// type these headers do not know is named by its number.
inline std::string DataTypeName(ffi::DataType dtype) {
  using T = ffi::DataType;
  struct Named {
    T dtype;
    const char* name;
  };
  static constexpr Named kNames[] = {
      {T::INVALID, "invalid"},
      {T::PRED, "bool"},
      {T::S1, "int1"},
      {T::S2, "int2"},
      {T::S4, "int4"},
      {T::S8, "int8"},
      {T::S16, "int16"},
      {T::S32, "int32"},
      {T::S64, "int64"},
      {T::U1, "uint1"},
      {T::U2, "uint2"},
      {T::U4, "uint4"},
      {T::U8, "uint8"},
      {T::U16, "uint16"},
      {T::U32, "uint32"},
      {T::U64, "uint64"},
      {T::F16, "float16"},
      {T::F32, "float32"},
      {T::F64, "float64"},
      {T::BF16, "bfloat16"},
      {T::C64, "complex64"},
      {T::C128, "complex128"},
      {T::TOKEN, "token"},
      {T::F8E5M2, "float8_e5m2"},
      {T::F8E4M3, "float8_e4m3"},
      {T::F8E4M3FN, "float8_e4m3fn"},
      {T::F8E4M3B11FNUZ, "float8_e4m3b11fnuz"},
      {T::F8E5M2FNUZ, "float8_e5m2fnuz"},
      {T::F8E4M3FNUZ, "float8_e4m3fnuz"},
      {T::F8E3M4, "float8_e3m4"},
      {T::F4E2M1FN, "float4_e2m1fn"},
      {T::F8E8M0FNU, "float8_e8m0fnu"},
  };
  for (const Named& n : kNames) {
    if (n.dtype == dtype) return n.name;
  }
  return "number " + std::to_string(static_cast<int>(dtype));
}

// Propagates a failed ffi::Error out of the calling function.
#define JAX_SYMM_RETURN_IF_ERROR(expr)          \
  do {                                          \
    ::xla::ffi::Error jax_symm_err_ = (expr);   \
    if (jax_symm_err_.failure()) return jax_symm_err_; \
  } while (0)

// One call site's view of the data, independent of transport.
//
// Every collective here moves `world` contiguous chunks of `chunk` bytes along
// the leading axis (lowering moves any other gathered, scattered, split or
// concatenated dimension to the front in JAX): all-gather reads one chunk and
// writes [world][chunk]; reduce-scatter reads [world][chunk] and writes one
// chunk; all-reduce reads and writes one chunk; all-to-all reads
// [world][chunk] (chunk j for rank j) and writes [world][chunk] (chunk i from
// rank i). The handlers never look at shapes.
struct CallLayout {
  int64_t chunk = 0;
  int64_t world = 1;
  int64_t rank = 0;
  size_t chunk_bytes() const { return static_cast<size_t>(chunk); }
};

// The group this device belongs to, decoded from the flattened replica groups
// (global device ids) that lowering attaches to every call.
struct GroupRef {
  std::vector<int64_t> members;  // global device ids, in axis-index order
  int64_t rank = -1;             // position of this device in `members`
  int64_t index = -1;            // which of the call's groups this is
};

inline ErrorOr<GroupRef> FindGroup(Int64Span groups, int64_t group_size,
                                   int64_t global_id) {
  if (group_size <= 0 || groups.size() % group_size != 0) {
    return InvalidArgument("malformed replica groups attribute");
  }
  for (size_t start = 0; start < groups.size(); start += group_size) {
    for (int64_t i = 0; i < group_size; ++i) {
      if (groups[start + i] == global_id) {
        GroupRef ref;
        ref.members.assign(groups.begin() + start,
                           groups.begin() + start + group_size);
        ref.rank = i;
        ref.index = static_cast<int64_t>(start / group_size);
        return ref;
      }
    }
  }
  return InvalidArgument("device " + std::to_string(global_id) +
                         " is in none of the call's replica groups");
}

inline std::string GroupToString(const std::vector<int64_t>& members) {
  std::string s = "[";
  for (size_t i = 0; i < members.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(members[i]);
  }
  return s + "]";
}

}  // namespace jax_symm
