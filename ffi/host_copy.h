// Copies for the host transport that bypass the cache when their
// destination is too large to be read again from it.
//
// An all-gather in one process writes world x world chunks; at 1 MiB per rank
// and 8 ranks that is 64 MiB, twice the last-level cache of the machines it
// runs on. Ordinary stores first read every destination line into the cache
// (and evict the inputs every rank still reads); non-temporal stores write
// whole lines straight to memory, a third less memory traffic. glibc's
// memcpy switches to them only for single copies of several MiB, not for the
// 1 MiB chunks a call writes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace jax_symm {

// The cache a core's copies can count on: 32 MiB, one core complex's L3 on
// the x86 servers this runs on (a larger socket-wide L3 is split between
// complexes). Not sysconf's figure: the 2-core VM this was measured on
// reports 320 MiB where lscpu shows 32 MiB.
constexpr size_t kCacheBytes = size_t{32} << 20;

inline void CopyStreaming(void* dst, const void* src, size_t n) {
#if defined(__x86_64__)
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  // Up to the first 16-byte boundary of the destination with an ordinary copy.
  const size_t head = std::min(n, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
  std::memcpy(d, s, head);
  d += head, s += head, n -= head;
  for (; n >= 64; n -= 64, d += 64, s += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
  }
  std::memcpy(d, s, n);
  // Streaming stores are weakly ordered: make them visible before the
  // barrier that tells peers (and XLA) the output is written.
  _mm_sfence();
#else
  std::memcpy(dst, src, n);
#endif
}

}  // namespace jax_symm
