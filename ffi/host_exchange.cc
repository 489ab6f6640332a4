// Host transport, part 3 of HostWindow: one call's exchange per kind
// (all-gather and all-to-all, both a Gather; reduce-scatter, all-reduce, the
// partitioned all-reduce), over
// the slots or, in one process, straight from the peers' inputs.
#include "host_window.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "host_copy.h"
#include "host_reduce.h"
#include "host_window_layout.h"

namespace jax_symm {

Error HostWindow::Admit(size_t bytes) const {
  if (header_->failed.load(std::memory_order_acquire) != 0) {
    return Internal("an earlier call at this call site of group " + GroupToString(members_) +
                    " failed, so its ranks are out of step; restart the job. The cause: " +
                    FailureReason());
  }
  if (bytes > slot_bytes_) {
    return Internal("a call of " + std::to_string(bytes) + " bytes does not fit its host "
                    "window's " + std::to_string(slot_bytes_) + "-byte slot");
  }
  return Error::Success();
}

bool HostWindow::Published(int64_t run_id, Peers& peers) const {
  const size_t world = members_.size();
  peers.in.resize(world);
  peers.out.resize(world);
  bool same_run = true;
  for (size_t q = 0; q < world; ++q) {
    const auto& rank = header_->ranks[q];
    peers.in[q] = reinterpret_cast<const char*>(rank.input.load(std::memory_order_relaxed));
    peers.out[q] = reinterpret_cast<char*>(rank.output.load(std::memory_order_relaxed));
    same_run &= rank.run_id.load(std::memory_order_relaxed) == run_id;
  }
  return same_run;
}

// Executions launched concurrently from several threads may reach the devices
// in different orders; better an error than another run's data.
Error HostWindow::DifferentExecutions() const {
  return Internal("the devices of group " + GroupToString(members_) + " met at one call "
                  "site while serving different executions: programs that share devices were "
                  "run concurrently from several threads; run them from one thread at a time");
}

template <typename Consume>
Error HostWindow::Exchange(int64_t rank, int64_t run_id, const void* in, size_t in_bytes,
                           Meeting& meeting, Consume consume) {
  auto& me = header_->ranks[rank];
  // A resumed call has arrived at its first barrier (its epoch) already.
  const uint64_t epoch = me.epoch.load(std::memory_order_relaxed) + (meeting.resume ? 0 : 1);
  if (!meeting.resume) JAX_SYMM_RETURN_IF_ERROR(Admit(in_bytes));
  const size_t world = members_.size();
  std::vector<const char*> sources(world);
  char* buffer = data_ + (epoch & 1) * world * slot_bytes_;
  if (!meeting.resume) std::memcpy(Slot(buffer, rank), in, in_bytes);
  JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
  if (meeting.pending) return Error::Success();
  for (size_t q = 0; q < world; ++q) sources[q] = Slot(buffer, q);
  return consume(sources);
}

template <typename Task>
Error HostWindow::SharedWork(int64_t rank, int64_t run_id, const void* in, void* out,
                             size_t in_bytes, Meeting& meeting, size_t tasks, Task task) {
  auto& me = header_->ranks[rank];
  // A resumed call has arrived at its first barrier (its epoch) already.
  const uint64_t epoch = me.epoch.load(std::memory_order_relaxed) + (meeting.resume ? 0 : 1);
  if (!meeting.resume) {
    JAX_SYMM_RETURN_IF_ERROR(Admit(in_bytes));
    me.input.store(reinterpret_cast<uint64_t>(in), std::memory_order_relaxed);
    me.output.store(reinterpret_cast<uint64_t>(out), std::memory_order_relaxed);
    me.run_id.store(run_id, std::memory_order_relaxed);
  }
  // Published: from here on peers may read `in` and write `out`, so a
  // failed call returns only once they have stopped (Settled).
  Error met = FirstMeeting(rank, epoch, meeting);
  if (met.failure()) return Settled(std::move(met));
  if (meeting.pending) return Error::Success();
  // Every rank sees the same published run ids, so either all of them work
  // or none does.
  Peers peers;
  Error worked = Published(run_id, peers) ? Error::Success() : DifferentExecutions();
  header_->working.fetch_add(1, std::memory_order_seq_cst);
  // A rank that gave up may return at any time after setting `failed`: no
  // task is taken after it is seen.
  while (worked.success() && header_->failed.load(std::memory_order_seq_cst) == 0) {
    const uint64_t i = header_->next_task.fetch_add(1, std::memory_order_relaxed);
    if (i >= tasks) break;
    worked = task(i, peers);
    // Another rank's output may be this task's: its rank must not return
    // success over it.
    if (worked.failure()) RecordFailure(worked.message());
  }
  header_->working.fetch_sub(1, std::memory_order_release);
  // Inputs and outputs stay published until every task is done.
  Error left = Barrier(rank, epoch + 1);
  if (worked.failure()) return Settled(std::move(worked));
  if (left.failure()) return Settled(std::move(left));
  if (header_->failed.load(std::memory_order_acquire) != 0) {
    return Settled(Internal("this call failed on another rank: " + FailureReason()));
  }
  return Error::Success();
}

namespace {

// The data one shared task reads (direct mode): enough to amortise taking it
// from the counter and to let the prefetchers ramp up, small enough that the
// ranks that run share out the call evenly.
constexpr size_t kTaskBytes = size_t{256} << 10;

// Elements per task when a task reads `sources` rows of `elem`-byte
// elements: whole cache lines, at least one.
size_t TaskElements(size_t sources, size_t elem) {
  const size_t line = std::max<size_t>(1, 64 / elem);
  const size_t n = std::max<size_t>(line, kTaskBytes / (sources * elem));
  return n / line * line;
}

size_t Blocks(size_t count, size_t per) { return count == 0 ? 0 : (count + per - 1) / per; }

// An element type without a width has no sum (the Python layer refuses it at
// trace time; this is the last line of defence before a division by it).
Error NoSum(ffi::DataType dtype) {
  return InvalidArgument("no host sum for element type " + DataTypeName(dtype));
}

}  // namespace

Error HostWindow::AllGather(const CallLayout& layout, int64_t run_id, const void* in,
                            void* out, Meeting& meeting) {
  return Gather(layout, run_id, in, out, /*personal=*/false, meeting);
}

Error HostWindow::AllToAll(const CallLayout& layout, int64_t run_id, const void* in,
                           void* out, Meeting& meeting) {
  return Gather(layout, run_id, in, out, /*personal=*/true, meeting);
}

// Rank q's output is world chunks, chunk s from rank s. An all-gather's
// rank s sends everyone its one chunk; an all-to-all's (`personal`) sends
// rank q chunk q of its world chunks. Bytes only: no element type.
Error HostWindow::Gather(const CallLayout& layout, int64_t run_id, const void* in, void* out,
                         bool personal, Meeting& meeting) {
  const size_t chunk = layout.chunk_bytes();
  const size_t world = layout.world;
  const size_t in_bytes = personal ? world * chunk : chunk;
  // Where, in rank s's input, the chunk for rank q starts.
  auto from = [personal, chunk](size_t q) { return personal ? q * chunk : 0; };
  // What this process's ranks read and write in one call: the world's
  // inputs, and world chunks out per local rank.
  const size_t touched = (local_ranks_ * world + (personal ? world * world : world)) * chunk;
  const bool stream = touched > kCacheBytes;
  auto copy = [stream](char* dst, const char* src, size_t n) {
    if (stream) {
      CopyStreaming(dst, src, n);
    } else {
      std::memcpy(dst, src, n);
    }
  };
  if (direct_) {
    // A task is one range of one rank's output (world chunks, back to back);
    // consecutive tasks are the same range of every output, so the sources
    // they read are still in the shared cache (an all-gather's; an
    // all-to-all's read neighbouring chunks of the same inputs).
    const size_t total = world * chunk, per = std::max<size_t>(64, kTaskBytes / 64 * 64);
    const size_t ranges = Blocks(total, per);
    return SharedWork(layout.rank, run_id, in, out, in_bytes, meeting, ranges * world,
                      [&](uint64_t i, const Peers& peers) {
                        const size_t q = i % world, lo = (i / world) * per;
                        const size_t hi = std::min(total, lo + per);
                        for (size_t at = lo; at < hi;) {
                          const size_t src = at / chunk, off = at % chunk;
                          const size_t n = std::min(hi - at, chunk - off);
                          copy(peers.out[q] + at, peers.in[src] + from(q) + off, n);
                          at += n;
                        }
                        return Error::Success();
                      });
  }
  const size_t me = static_cast<size_t>(layout.rank);
  return Exchange(layout.rank, run_id, in, in_bytes, meeting,
                  [&](const std::vector<const char*>& src) {
                    char* dst = static_cast<char*>(out);
                    for (size_t s = 0; s < world; ++s) {
                      copy(dst + s * chunk, src[s] + from(me), chunk);
                    }
                    return Error::Success();
                  });
}

Error HostWindow::ReduceScatter(const CallLayout& layout, int64_t run_id,
                                ffi::DataType dtype, const void* in, void* out,
                                Meeting& meeting) {
  const size_t chunk = layout.chunk_bytes();
  const size_t world = layout.world;
  const size_t elem = ffi::ByteWidth(dtype);
  if (elem == 0) return NoSum(dtype);
  if (direct_) {
    // A task is one block of one rank's output: that block of the rank's
    // chunk of every input, summed.
    const size_t count = chunk / elem, per = TaskElements(world, elem);
    const size_t blocks = Blocks(count, per);
    return SharedWork(layout.rank, run_id, in, out, chunk * world, meeting, blocks * world,
                      [&](uint64_t i, const Peers& peers) {
                        const size_t q = i / blocks, lo = (i % blocks) * per;
                        const size_t n = std::min(count - lo, per);
                        std::vector<const char*> rows(world);
                        for (size_t s = 0; s < world; ++s) {
                          rows[s] = peers.in[s] + q * chunk + lo * elem;
                        }
                        return host_reduce::Sum(dtype, peers.out[q] + lo * elem, rows, n);
                      });
  }
  // Rank r keeps chunk r of the sum: it reads chunk r of every rank's input.
  return Exchange(layout.rank, run_id, in, chunk * world, meeting,
                  [&](const std::vector<const char*>& src) {
                    std::vector<const char*> rows(world);
                    for (size_t q = 0; q < world; ++q) rows[q] = src[q] + layout.rank * chunk;
                    return host_reduce::Sum(dtype, out, rows, chunk / elem);
                  });
}

// From this size on, an all-reduce across processes is split: each rank sums
// only its 1/world share of the elements, leaves it in its slot and everyone
// copies the shares out after one more barrier. That reads each input once in
// all instead of once per rank -- world times less summing, which is what
// matters with more ranks than cores.
constexpr size_t kPartitionedSumBytes = 8 << 10;

Error HostWindow::AllReduce(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                            const void* in, void* out, Meeting& meeting) {
  const size_t bytes = layout.chunk_bytes();
  const size_t elem = ffi::ByteWidth(dtype);
  if (elem == 0) return NoSum(dtype);
  if (direct_) {
    // A task is one block of the sum, written into every rank's output while
    // it is in cache: each input is read once in all.
    const size_t count = bytes / elem, per = TaskElements(2 * layout.world, elem);
    return SharedWork(layout.rank, run_id, in, out, bytes, meeting, Blocks(count, per),
                      [&](uint64_t i, const Peers& peers) {
                        const size_t lo = i * per, n = std::min(count - lo, per);
                        std::vector<const char*> rows(layout.world);
                        std::vector<char*> outs(layout.world);
                        for (size_t q = 0; q < rows.size(); ++q) {
                          rows[q] = peers.in[q] + lo * elem;
                          outs[q] = peers.out[q] + lo * elem;
                        }
                        return host_reduce::Sum(dtype, outs, rows, n);
                      });
  }
  if (bytes < kPartitionedSumBytes) {
    return Exchange(layout.rank, run_id, in, bytes, meeting, [&](const std::vector<const char*>& src) {
      return host_reduce::Sum(dtype, out, src, bytes / elem);
    });
  }
  return PartitionedAllReduce(layout.rank, run_id, dtype, in, out, bytes / elem, elem,
                              meeting);
}

Error HostWindow::PartitionedAllReduce(int64_t rank, int64_t run_id, ffi::DataType dtype,
                                       const void* in, void* out, size_t count, size_t elem,
                                       Meeting& meeting) {
  const size_t world = members_.size(), bytes = count * elem;
  if (!meeting.resume) JAX_SYMM_RETURN_IF_ERROR(Admit(bytes));
  // Rank q owns elements [share(q), share(q + 1)), in whole cache lines.
  const size_t per = (count + world - 1) / world;
  const size_t line = std::max<size_t>(1, 64 / elem);
  const size_t step = (per + line - 1) / line * line;
  auto share = [&](size_t q) { return std::min(count, q * step); };
  const size_t lo = share(rank), n = share(rank + 1) - lo;
  auto& me = header_->ranks[rank];
  // A resumed call has arrived at its first barrier (its epoch) already.
  const uint64_t epoch = me.epoch.load(std::memory_order_relaxed) + (meeting.resume ? 0 : 1);
  std::vector<const char*> sources(world);
  char* dst = static_cast<char*>(out);
  // Across processes: inputs go through the slots; each rank writes its sum
  // over its share back into its own slot (no one else reads that share of
  // it), and after a second meeting everyone copies the shares out. Two
  // barriers a call, so buffers alternate by call, not by barrier.
  const uint64_t call = (epoch - 1) / 2;
  char* buffer = data_ + (call & 1) * world * slot_bytes_;
  if (!meeting.resume) std::memcpy(Slot(buffer, rank), in, bytes);
  JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
  if (meeting.pending) return Error::Success();
  for (size_t q = 0; q < world; ++q) sources[q] = Slot(buffer, q) + lo * elem;
  char* mine = Slot(buffer, rank) + lo * elem;
  if (n) JAX_SYMM_RETURN_IF_ERROR(host_reduce::Sum(dtype, mine, sources, n));
  JAX_SYMM_RETURN_IF_ERROR(Barrier(rank, epoch + 1));
  for (size_t q = 0; q < world; ++q) {
    const size_t at = share(q), len = share(q + 1) - at;
    if (len) std::memcpy(dst + at * elem, Slot(buffer, q) + at * elem, len * elem);
  }
  return Error::Success();
}

}  // namespace jax_symm
