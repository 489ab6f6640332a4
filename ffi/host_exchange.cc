// Host transport, part 3 of HostWindow: one call's exchange per kind
// (all-gather, reduce-scatter, all-reduce, the partitioned all-reduce), over
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

bool HostWindow::PublishedInputs(int64_t run_id, size_t offset,
                                 std::vector<const char*>& sources) const {
  bool same_run = true;
  for (size_t q = 0; q < members_.size(); ++q) {
    sources[q] = reinterpret_cast<const char*>(
                     header_->ranks[q].input.load(std::memory_order_relaxed)) + offset;
    same_run &= header_->ranks[q].run_id.load(std::memory_order_relaxed) == run_id;
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
  if (direct_) {
    // All ranks share this address space: read each other's inputs in place,
    // then wait until everyone is done before any input can be released.
    if (!meeting.resume) {
      me.input.store(reinterpret_cast<uint64_t>(in), std::memory_order_relaxed);
      me.run_id.store(run_id, std::memory_order_relaxed);
    }
    JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
    if (meeting.pending) return Error::Success();
    Error consumed = PublishedInputs(run_id, 0, sources) ? consume(sources)
                                                         : DifferentExecutions();
    Error left = Barrier(rank, epoch + 1);
    return consumed.failure() ? consumed : left;
  }
  char* buffer = data_ + (epoch & 1) * world * slot_bytes_;
  if (!meeting.resume) std::memcpy(Slot(buffer, rank), in, in_bytes);
  JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
  if (meeting.pending) return Error::Success();
  for (size_t q = 0; q < world; ++q) sources[q] = Slot(buffer, q);
  return consume(sources);
}

Error HostWindow::AllGather(const CallLayout& layout, int64_t run_id, const void* in,
                            void* out, Meeting& meeting) {
  const size_t chunk = layout.chunk_bytes();
  // What this process's ranks read and write in one call: the world's
  // inputs, and world chunks out per local rank.
  const size_t touched = (local_ranks_ + 1) * layout.world * chunk;
  const bool stream = touched > kCacheBytes;
  return Exchange(layout.rank, run_id, in, chunk, meeting, [&](const std::vector<const char*>& src) {
    char* dst = static_cast<char*>(out);
    for (int64_t q = 0; q < layout.world; ++q) {
      if (stream) {
        CopyStreaming(dst + q * chunk, src[q], chunk);
      } else {
        std::memcpy(dst + q * chunk, src[q], chunk);
      }
    }
    return Error::Success();
  });
}

Error HostWindow::ReduceScatter(const CallLayout& layout, int64_t run_id,
                                ffi::DataType dtype, const void* in, void* out,
                                Meeting& meeting) {
  const size_t chunk = layout.chunk_bytes();
  // Rank r keeps chunk r of the sum: it reads chunk r of every rank's input.
  return Exchange(layout.rank, run_id, in, chunk * layout.world, meeting,
                  [&](const std::vector<const char*>& src) {
                    std::vector<const char*> rows(layout.world);
                    for (int64_t q = 0; q < layout.world; ++q) rows[q] = src[q] + layout.rank * chunk;
                    return host_reduce::Sum(dtype, out, rows, chunk / ffi::ByteWidth(dtype));
                  });
}

// From this size on, an all-reduce is split: each rank sums only its 1/world
// share of the elements. In one process it writes that share straight into
// every rank's output; across processes it leaves it in its slot and everyone
// copies the shares out after one more barrier. That reads each input once in
// all instead of once per rank -- world times less summing, which is what
// matters with more ranks than cores.
constexpr size_t kPartitionedSumBytes = 8 << 10;

Error HostWindow::AllReduce(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                            const void* in, void* out, Meeting& meeting) {
  const size_t bytes = layout.chunk_bytes();
  const size_t elem = ffi::ByteWidth(dtype);
  if (bytes < kPartitionedSumBytes || elem == 0) {
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

  if (direct_) {
    // Two meetings: inputs and outputs published; every share summed straight
    // into every rank's output (then inputs and outputs may be released).
    if (!meeting.resume) {
      me.input.store(reinterpret_cast<uint64_t>(in), std::memory_order_relaxed);
      me.output.store(reinterpret_cast<uint64_t>(out), std::memory_order_relaxed);
      me.run_id.store(run_id, std::memory_order_relaxed);
    }
    JAX_SYMM_RETURN_IF_ERROR(FirstMeeting(rank, epoch, meeting));
    if (meeting.pending) return Error::Success();
    Error summed = Error::Success();
    if (!PublishedInputs(run_id, lo * elem, sources)) {
      summed = DifferentExecutions();
    } else if (n) {
      std::vector<char*> outputs(world);
      for (size_t q = 0; q < world; ++q) {
        outputs[q] = reinterpret_cast<char*>(
                         header_->ranks[q].output.load(std::memory_order_relaxed)) + lo * elem;
      }
      summed = host_reduce::Sum(dtype, outputs, sources, n);
    }
    Error left = Barrier(rank, epoch + 1);
    return summed.failure() ? summed : left;
  }
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
