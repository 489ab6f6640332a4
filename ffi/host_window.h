// Host transport: "symmetric windows" in POSIX shared memory.
//
// One window serves one call site (channel) of one group: every rank of the
// group maps the same segment, writes its chunk into its own slot, meets the
// others at a barrier, then reads what it needs from every slot. Two copies of
// the slots alternate between consecutive calls, so one barrier per call is
// enough: a rank can only overwrite a buffer after every rank has passed the
// barrier of the call that follows the last read of that buffer. When the
// whole job is one process, ranks instead read each other's inputs in place
// and meet a second time before returning.
//
// Segments are named by (session, kind, channel, slot size, members), so every
// process of a group derives the same name without talking, and a window that
// must grow is a new segment rather than a resize under a peer's feet.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ffi_common.h"

namespace jax_symm {

struct HostConfig {
  std::string session;          // shared by every process of one job
  double timeout_s = 300.0;     // longest wait for a live peer at a barrier
  double poll_s = 0.05;         // how often a waiter checks that peers live
  bool single_process = false;  // no other process will open our segments
};
void SetHostConfig(const HostConfig& config);
HostConfig GetHostConfig();

class HostWindow {
 public:
  // Maps (creating if needed) the segment for this call site. Safe to call
  // from many threads and processes at once: creation is idempotent.
  static ErrorOr<HostWindow*> Get(CollectiveKind kind, int64_t channel,
                                  const std::vector<int64_t>& members,
                                  size_t slot_bytes);

  // Records which process serves `ranks`, before any call: a peer killed
  // before its first call is then recognised as gone, not waited for.
  void ClaimRanks(const std::vector<int64_t>& ranks);

  // `run_id` names the execution (XLA's RunId); within one process every
  // rank of a call must be serving the same execution.
  Error AllGather(const CallLayout& layout, int64_t run_id, const void* in, void* out);
  Error ReduceScatter(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                      const void* in, void* out);
  Error AllReduce(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                  const void* in, void* out);

  const std::string& name() const { return name_; }
  size_t mapped_bytes() const { return mapped_bytes_; }

  // Unlinks every segment this process opened (mappings stay valid until
  // exit, so a handler still running on another thread cannot fault).
  static void UnlinkAll();
  // Unlinks segments in /dev/shm left by jobs whose processes are all gone
  // (killed before they could clean up). Returns the names removed.
  static std::vector<std::string> ReapStale();
  // (name, bytes) of every segment this process has mapped.
  static std::vector<std::pair<std::string, size_t>> List();

 private:
  struct Header;
  HostWindow() = default;

  // Publishes this rank's arrival at barrier `epoch` and waits for the others.
  Error Barrier(int64_t rank, uint64_t epoch);
  // One call: makes every rank's input (in_bytes) readable by all, then runs
  // consume(sources), sources[q] pointing at rank q's input.
  template <typename Consume>
  Error Exchange(int64_t rank, int64_t run_id, const void* in, size_t in_bytes,
                 Consume consume);
  char* Slot(char* buffer, int64_t rank) const {
    return buffer + static_cast<size_t>(rank) * slot_bytes_;
  }

  std::string name_;
  std::vector<int64_t> members_;
  size_t slot_bytes_ = 0;
  size_t mapped_bytes_ = 0;
  Header* header_ = nullptr;
  char* data_ = nullptr;  // two buffers of world * slot_bytes_
  // Every rank lives in this process: inputs are read in place (two barriers
  // a call) instead of being copied through the slots (one barrier).
  bool direct_ = false;
  int spins_ = 0;  // busy-wait iterations before sleeping at a barrier
};

}  // namespace jax_symm
