// Host transport: "symmetric windows" in POSIX shared memory.
//
// One window serves one call site of one group: every rank of the group maps
// the same segment, writes its chunk into its own slot, meets the others at a
// barrier, then reads what it needs from every slot. Two copies of the slots
// alternate between consecutive calls, so one barrier per call is enough: a
// rank can only overwrite a buffer after every rank has passed the barrier of
// the call that follows the last read of that buffer. When the whole job is
// one process, ranks instead publish their inputs and outputs, share the
// call's work out in tasks that read any rank's input and write any rank's
// output (SharedWork), and meet a second time before returning.
//
// Windows are made at lowering (Prepare), where every process passes in step,
// under a name Python derives from a per-job secret; handlers only look them
// up by (call site, group). The segment itself is guarded by SharedSegment.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ffi_common.h"
#include "ffi_kinds.h"
#include "host_segment.h"

namespace jax_symm {

struct HostConfig {
  double timeout_s = 300.0;       // longest wait for a live peer at a barrier
  double poll_s = 0.05;           // how often a waiter checks that peers live
  double open_timeout_s = 120.0;  // longest wait for a peer to create a window
  bool single_process = false;    // no other process will open our segments
  int spins = -1;                 // busy-waits before sleeping; -1: by core count
  // Longest wait for peers on XLA's thread (Meeting::patience_s): about one
  // scheduler time slice of a busy Linux machine, so that a peer that lost
  // its core for one slice is still met without the pool's hand-off.
  double patience_s = 5e-3;
  // A barrier that has waited this long is reported to the process's
  // diagnosis (LongWaits below: jax_symm/_programs.py compares the programs
  // its peers lowered); 0: never (one process alone has nobody to compare).
  double diagnose_after_s = 0;
};
// Refuses (and keeps the old configuration) a wait that is nan, inf,
// negative or zero where that means nothing: a nan timeout never expires.
Error SetHostConfig(const HostConfig& config);

// Everything lowering decides about one call site's window.
// How a call meets its peers at its first barrier, the one where a peer may
// still be outside the call (after it, every peer is inside, and what is left
// waits only on work already under way).
struct Meeting {
  // < 0: wait there as long as it takes. >= 0: wait at most this long, then
  // return with `pending` set (the arrival stays counted) for the caller to
  // finish the call with `resume` on a thread that may wait.
  double patience_s = -1;
  bool resume = false;   // in: this call arrived earlier and returned pending
  bool pending = false;  // out: the call is not finished; resume it
};

struct WindowSpec {
  int64_t site = -1;              // unique per lowered call site in this process
  CollectiveKind kind = CollectiveKind::kAllGather;
  std::vector<int64_t> members;   // the group, as global device ids
  size_t slot_bytes = 0;          // what one rank contributes per call
  uint64_t fingerprint = 0;       // what the call is; peers must agree on it
  std::string name;               // "/jax_symm-<keyed hash>", of the generation too
  // Which making of this (site, group)'s window this is (Generation()):
  // counted alike in every process, so a window made anew after its
  // executables went (jax.clear_caches()) gets a new name, and a process
  // that lowers anew can never open the old one that is still linked.
  uint64_t generation = 1;
  bool create = false;            // this process makes the segment
  std::vector<int64_t> local_ranks;  // ranks this process serves
  // An opener's wait for the creator: < 0, HostConfig::open_timeout_s; else
  // this long, after which Prepare returns DeadlineExceeded and may be called
  // again (Python waits in slices, comparing programs in between).
  double wait_s = -1;
};

class HostWindow {
 public:
  // Creates or opens, validates and claims the window of `spec`. Idempotent.
  static Error Prepare(const WindowSpec& spec);
  // The generation Prepare would give (site, group)'s window now: the
  // current one's while it exists, else one more than the last one made.
  static uint64_t Generation(int64_t site, const std::vector<int64_t>& members);
  static ErrorOr<HostWindow*> Find(int64_t site, const std::vector<int64_t>& members);
  // An executable that uses the window of (site, group) was made / freed.
  // When the last one is freed the window is unmapped (and its name removed
  // by the process that made it). Acquire is false for a window this process
  // does not have (a group without a device here): release only what it took.
  static bool Acquire(int64_t site, const std::vector<int64_t>& members);
  static void Release(int64_t site, const std::vector<int64_t>& members);
  // Marks the window of (site, group) failed with `why`, as a rank that gives
  // up does: its waiters in every process stop with this cause, and every
  // later call fails with it. False where this process has no such window.
  static bool Fail(int64_t site, const std::vector<int64_t>& members, const std::string& why);

  // A rank serves one call of a call site at a time: the calls of one site
  // cannot be told apart, so a second one while the first is under way (one
  // lowered function called at independent points and run concurrently) is
  // refused rather than paired. Enter returns false if the rank is busy.
  bool Enter(int64_t rank);
  void Leave(int64_t rank);

  // `run_id` names the execution (XLA's RunId); within one process every
  // rank of a call must be serving the same execution. `meeting` says how
  // long the first barrier may wait (see Meeting).
  Error AllGather(const CallLayout& layout, int64_t run_id, const void* in, void* out,
                  Meeting& meeting);
  Error ReduceScatter(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                      const void* in, void* out, Meeting& meeting);
  Error AllReduce(const CallLayout& layout, int64_t run_id, ffi::DataType dtype,
                  const void* in, void* out, Meeting& meeting);
  Error AllToAll(const CallLayout& layout, int64_t run_id, const void* in, void* out,
                 Meeting& meeting);

  // Unlinks every segment this process opened (mappings stay valid until
  // exit, so a handler still running on another thread cannot fault).
  const std::vector<int64_t>& members() const { return members_; }
  // How long a call may wait for its peers on XLA's thread (HostConfig).
  double patience_s() const { return patience_s_; }

  static void UnlinkAll();
  // (name, bytes) of every segment this process has mapped.
  static std::vector<std::pair<std::string, size_t>> List();

 private:
  struct Header;
  HostWindow() = default;

  Error Validate(const WindowSpec& spec, double timeout_s,
                 const std::function<Error()>& abandon) const;
  // Publishes this rank's arrival at barrier `epoch` and waits for the others.
  Error Barrier(int64_t rank, uint64_t epoch);
  // Barrier's halves: Arrive publishes the arrival (true: it was the last, so
  // the barrier is released); Await waits for the release, checking that
  // peers live and giving up after the timeout.
  bool Arrive(int64_t rank, uint64_t epoch);
  Error Await(int64_t rank, uint64_t epoch);
  // A call's first barrier, as `meeting` asks (it may leave it pending).
  Error FirstMeeting(int64_t rank, uint64_t epoch, Meeting& meeting);
  // All-gather and all-to-all: every rank's output is world chunks, chunk s
  // from rank s; `personal`: rank s sends rank q chunk q of its world chunks
  // (all-to-all), else its one chunk (all-gather).
  Error Gather(const CallLayout& layout, int64_t run_id, const void* in, void* out,
               bool personal, Meeting& meeting);
  // Across processes, an all-reduce of `count` elements of `elem` bytes,
  // each rank summing a share.
  Error PartitionedAllReduce(int64_t rank, int64_t run_id, ffi::DataType dtype,
                             const void* in, void* out, size_t count, size_t elem,
                             Meeting& meeting);
  // Before a call: a failed call site stays failed; a call must fit its slot.
  Error Admit(size_t bytes) const;
  // Direct mode: every rank's input and output, as published for one call.
  struct Peers {
    std::vector<const char*> in;
    std::vector<char*> out;
  };
  // Direct mode: the published buffers into `peers`; false if some rank
  // serves another execution.
  bool Published(int64_t run_id, Peers& peers) const;
  Error DifferentExecutions() const;
  // Records why this call site failed, once, for every rank's error message.
  void RecordFailure(const std::string& why);
  // Direct mode: returns `err` once no rank is taking tasks, so that no peer
  // still writes into this rank's output (or reads its input) after the call
  // has returned and XLA has freed them. Only for a failed call: `failed` is
  // set, so the working ranks stop after the task in hand.
  Error Settled(Error err) const;
  std::string FailureReason() const;
  // Across processes, one call: copies this rank's input (in_bytes) into its
  // slot, meets the others, then runs consume(sources), sources[q] pointing
  // at rank q's slot.
  template <typename Consume>
  Error Exchange(int64_t rank, int64_t run_id, const void* in, size_t in_bytes,
                 Meeting& meeting, Consume consume);
  // In one process, one call: every rank publishes its input and output, and
  // after the first meeting the ranks that are running take tasks 0..tasks-1
  // from a shared counter, task(i, peers) reading any rank's input and
  // writing any rank's output, until none is left; a second meeting ends the
  // call. So the work of a rank whose thread is off its core (more ranks
  // than cores) is done by one that runs, instead of being waited for.
  template <typename Task>
  Error SharedWork(int64_t rank, int64_t run_id, const void* in, void* out, size_t in_bytes,
                   Meeting& meeting, size_t tasks, Task task);
  char* Slot(char* buffer, int64_t rank) const {
    return buffer + static_cast<size_t>(rank) * slot_bytes_;
  }

  SharedSegment* segment_ = nullptr;
  int64_t site_ = -1;
  CollectiveKind kind_ = CollectiveKind::kAllGather;
  bool creator_ = false;  // this process made the segment (and removes its name)
  int users_ = 0;         // executables using it (guarded by the windows' lock)
  // Lowerings that prepared it and whose executables have not acquired it
  // yet: it must outlive an older executable released in between (Python's
  // collector may destroy that one while the new program compiles).
  int pending_ = 0;
  std::vector<int64_t> members_;
  size_t slot_bytes_ = 0;
  Header* header_ = nullptr;
  char* data_ = nullptr;  // two buffers of world * slot_bytes_
  // Every rank lives in this process: inputs are read in place (two barriers
  // a call) instead of being copied through the slots (one barrier).
  bool direct_ = false;
  int spins_ = 0;
  std::unique_ptr<std::atomic<bool>[]> busy_;  // per rank, in this process
  double timeout_s_ = 300.0, poll_s_ = 0.05, patience_s_ = 5e-3, diagnose_after_s_ = 0;
  size_t local_ranks_ = 0;  // ranks this process serves
};

// Barrier waits that last longer than HostConfig::diagnose_after_s, for the
// one Python thread that diagnoses them (jax_symm/_programs.py). A wait is
// listed from then until it ends, by (call site, group).
struct LongWait {
  int64_t site;
  std::vector<int64_t> members;
};
// Blocks until some wait is listed and the list changed since the last
// return, or it has been `recheck_s` since then with waits still listed;
// fills `waits` with those listed now. Returns false once StopLongWaits ran.
bool NextLongWaits(double recheck_s, std::vector<LongWait>* waits);
void StopLongWaits();

}  // namespace jax_symm
