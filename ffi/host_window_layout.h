// Host transport, private to the three parts of HostWindow (host_window.cc:
// registry and lifetime; host_barrier.cc: the barrier and failure
// diagnosis; host_exchange.cc: the exchange per kind): the segment layout
// and the small helpers they share.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "host_window.h"

namespace jax_symm {
namespace host_window_detail {

constexpr size_t kPage = 4096;

inline size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

inline int FutexWait(std::atomic<uint32_t>* addr, uint32_t expected, double seconds) {
  // Clamped like every wait (WaitFor): casting nan or inf to time_t is UB.
  if (!(seconds > 0)) seconds = 0;
  if (seconds > kMaxWaitSeconds) seconds = kMaxWaitSeconds;
  timespec ts;
  ts.tv_sec = static_cast<time_t>(seconds);
  ts.tv_nsec = static_cast<long>((seconds - ts.tv_sec) * 1e9);
  // Not FUTEX_PRIVATE: waiters and wakers may live in different processes.
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT,
                 expected, &ts, nullptr, 0);
}

inline void FutexWakeAll(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE, INT_MAX,
          nullptr, nullptr, 0);
}

inline std::string Seconds(double s) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.2f s", s);
  return buf;
}

}  // namespace host_window_detail

// Lives at the start of every segment. The creator fills it in and sets
// `magic` last; openers use nothing before they have seen `magic` and checked
// every field against what their own lowering expects.
struct HostWindow::Header {
  struct alignas(64) RankState {
    std::atomic<uint64_t> epoch;    // barriers this rank has entered
    std::atomic<uint32_t> claimed;  // a process has taken this rank's lock
    std::atomic<int32_t> pid;       // that process (for messages only)
    std::atomic<uint64_t> input;    // direct mode: address of this rank's input
    std::atomic<int64_t> run_id;    // direct mode: the execution this rank serves
    std::atomic<uint64_t> output;   // direct mode: address of this rank's output
  };
  std::atomic<uint64_t> magic;
  uint64_t version, world, slot_bytes, fingerprint, kind;
  alignas(64) std::atomic<uint64_t> arrived;     // barrier arrivals, ever
  alignas(64) std::atomic<uint32_t> generation;  // last completed barrier (futex word)
  // Direct mode, the call under way (HostWindow::SharedWork): the next task
  // that no rank has taken yet, reset by whoever releases a barrier, and how
  // many ranks are taking tasks now, which a rank giving up waits to see at
  // zero before it returns.
  alignas(64) std::atomic<uint64_t> next_task;
  std::atomic<uint32_t> working;
  // The first rank that gives up (a peer died or timed out) writes why into
  // `failure` and then sets `failed`: the group is out of step for good, every
  // later call fails at once, and every rank's error carries the cause. On
  // its own line: every rank reads `failed` while the counters above change.
  alignas(64) std::atomic<uint32_t> failure_claimed;
  std::atomic<uint32_t> failed;
  // Room for the cause, who arrived and who did not, and its hints, also when
  // quoted by another rank (one page of header still holds 27 ranks).
  char failure[2048];
  alignas(64) RankState ranks[1];  // `world` of them

  static size_t Bytes(size_t world) {
    return host_window_detail::AlignUp(offsetof(Header, ranks) + world * sizeof(RankState), host_window_detail::kPage);
  }
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "need lock-free atomics");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "need lock-free atomics");

}  // namespace jax_symm
